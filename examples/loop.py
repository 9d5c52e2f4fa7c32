"""A loop that refines a value until it is good enough (or gives up after 10 passes)."""

from pydantic import BaseModel

from smithers import Loop, Sequence, Task, workflow


class Attempt(BaseModel):
    value: int


class Verdict(BaseModel):
    value: int
    passes: int


def improve(ctx):
    previous = ctx.latest(Attempt, "improve")
    return Attempt(value=(previous.value if previous else 0) + ctx.input.get("step", 3))


@workflow("loop", name="Refine until good")
def refine(ctx):
    """Add a step each pass until the value reaches the target."""
    latest = ctx.latest(Attempt, "improve")
    target = ctx.input.get("target", 10)
    return Sequence(
        Loop(
            "refine",
            Task("improve", output=Attempt, run=improve),
            until=latest is not None and latest.value >= target,
            max_iterations=10,
        ),
        Task(
            "verdict",
            output=Verdict,
            run=lambda ctx: Verdict(
                value=ctx.latest(Attempt, "improve").value, passes=ctx.iteration_count(Attempt, "improve")
            ),
        ),
    )

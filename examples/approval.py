"""A deploy that waits for a person to approve it."""

from pydantic import BaseModel

from smithers import Approval, Branch, Sequence, Task, workflow


class Plan(BaseModel):
    service: str
    version: str


class Deployed(BaseModel):
    service: str
    version: str
    approved_by: str | None


@workflow("deploy", name="Deploy with approval")
def deploy(ctx):
    """Plan a deploy, ask a person, then ship it (or stop)."""
    decision = ctx.output_maybe("ship")
    return Sequence(
        Task(
            "plan",
            output=Plan,
            run=lambda ctx: Plan(service=ctx.input.get("service", "api"), version=ctx.input.get("version", "1.0.0")),
        ),
        Approval(
            "ship", title="Ship this deploy?", summary="Deploys the planned version to production", on_deny="fail"
        ),
        Branch(
            decision is not None and decision["approved"],
            then=Task(
                "deploy",
                output=Deployed,
                run=lambda ctx: Deployed(
                    **ctx.output(Plan, "plan").model_dump(), approved_by=ctx.output("ship")["decidedBy"]
                ),
            ),
        ),
    )

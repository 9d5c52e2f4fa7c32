"""Fan out over the input items in parallel, then fan in to one total."""

import asyncio

from pydantic import BaseModel

from smithers import Parallel, Sequence, Task, workflow


class Square(BaseModel):
    n: int
    square: int


class Total(BaseModel):
    total: int
    count: int


def square_of(n: int):
    async def run(ctx):
        await asyncio.sleep(0.05)  # pretend to call something slow
        return Square(n=n, square=n * n)

    return run


def numbers(ctx) -> list[int]:
    return ctx.input.get("numbers", [1, 2, 3, 4, 5])


def total(ctx):
    squares = [ctx.output(Square, f"square-{n}") for n in numbers(ctx)]
    return Total(total=sum(s.square for s in squares), count=len(squares))


@workflow("fanout", name="Parallel fan-out and fan-in")
def fanout(ctx):
    """Square numbers in parallel (at most 3 at a time) and add them up."""
    return Sequence(
        Parallel(*[Task(f"square-{n}", output=Square, run=square_of(n)) for n in numbers(ctx)], max_concurrency=3),
        Task("total", output=Total, run=total),
    )

"""A three-step sequence where each step reads the output of the one before."""

from pydantic import BaseModel

from smithers import Sequence, Task, workflow


class Draft(BaseModel):
    text: str


class Review(BaseModel):
    text: str
    words: int


class Published(BaseModel):
    url: str
    words: int


def write(ctx):
    return Draft(text=f"A short note about {ctx.input.get('topic', 'smithers')}.")


def review(ctx):
    draft = ctx.output(Draft, "write")
    return Review(text=draft.text.upper(), words=len(draft.text.split()))


def publish(ctx):
    reviewed = ctx.output(Review, "review")
    slug = "-".join(reviewed.text.lower().strip(".").split()[:4])
    return Published(url=f"https://example.invalid/{slug}", words=reviewed.words)


@workflow("pipeline", name="Write, review, publish")
def pipeline(ctx):
    """Write a note, review it, publish it."""
    return Sequence(
        Task("write", output=Draft, run=write),
        Task("review", output=Review, run=review),
        Task("publish", output=Published, run=publish),
    )

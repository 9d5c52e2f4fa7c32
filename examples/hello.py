"""Hello: one task greeting the name in the input."""

from pydantic import BaseModel

from smithers import Sequence, Task, workflow


class HelloInput(BaseModel):
    name: str = "world"


class Greeting(BaseModel):
    message: str


@workflow("hello", input=HelloInput, name="Hello")
def hello(ctx):
    """Greets someone."""
    return Sequence(
        Task("greet", output=Greeting, run=lambda ctx: Greeting(message=f"hello {ctx.input['name']}")),
    )

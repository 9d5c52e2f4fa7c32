"""A task that fails twice, is retried with backoff, then succeeds."""

from pathlib import Path

from pydantic import BaseModel

from smithers import RetryPolicy, Sequence, Task, workflow


class Fetched(BaseModel):
    attempts: int


def fetch(ctx):
    counter = Path(ctx.input.get("counter_file", f"/tmp/smithers-flaky-{ctx.run_id}.count"))
    count = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(count))
    if count < 3:
        raise ConnectionError(f"upstream unavailable (try {count})")
    return Fetched(attempts=count)


@workflow("flaky", name="Retry until it works")
def flaky(ctx):
    """Retries a failing fetch with exponential backoff."""
    return Sequence(
        Task(
            "fetch",
            output=Fetched,
            run=fetch,
            retries=3,
            retry_policy=RetryPolicy(backoff="exponential", initial_delay_ms=50),
        ),
    )

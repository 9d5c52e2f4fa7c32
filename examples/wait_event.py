"""Wait for an external event (a signal) and use its payload."""

from pydantic import BaseModel

from smithers import Sequence, Task, WaitForEvent, workflow


class Payment(BaseModel):
    amount: int
    currency: str = "EUR"


class Receipt(BaseModel):
    text: str


@workflow("payment", name="Wait for a payment")
def payment(ctx):
    """Open an order, wait for the payment event, write a receipt."""
    return Sequence(
        Task("open", value={"order": ctx.input.get("order", "A-1")}),
        WaitForEvent("paid", event="payment.received", output=Payment),
        Task(
            "receipt",
            output=Receipt,
            run=lambda ctx: Receipt(
                text=f"received {ctx.output(Payment, 'paid').amount} {ctx.output(Payment, 'paid').currency}"
            ),
        ),
    )

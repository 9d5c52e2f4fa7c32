"""The example gateway: every example workflow, token auth, a nightly schedule and a webhook.

    smithers serve examples/gateway.py --console  (README's first command runs this)

The admin token is $SMITHERS_TOKEN, or a fresh one printed at start; sign in to the console
(http://127.0.0.1:7331/console with --console) with it. Tokens issued with
`smithers token issue` are honoured too. The payment webhook's secret is $SMITHERS_WEBHOOK_SECRET,
or a fresh one printed at start (a published default would let anyone post signed events).
"""

import os
import secrets
import sys

from approval import deploy
from fanout import fanout
from flaky import flaky
from hello import hello
from loop import refine
from pipeline import pipeline
from wait_event import payment

from smithers import Gateway

TOKEN = os.environ.get("SMITHERS_TOKEN") or secrets.token_urlsafe(24)
if "SMITHERS_TOKEN" not in os.environ:
    print(f"smithers: admin token for this session (sign in with it): {TOKEN}", file=sys.stderr, flush=True)
else:
    print("smithers: admin token: the value of $SMITHERS_TOKEN (sign in with it)", file=sys.stderr, flush=True)
WEBHOOK_SECRET = os.environ.get("SMITHERS_WEBHOOK_SECRET") or secrets.token_urlsafe(24)
if "SMITHERS_WEBHOOK_SECRET" not in os.environ:
    print(f"smithers: payment webhook secret for this session: {WEBHOOK_SECRET}", file=sys.stderr, flush=True)

gateway = Gateway(
    db=os.environ.get("SMITHERS_DB", "smithers.db"),
    auth={"mode": "token", "tokens": {TOKEN: {"role": "admin", "scopes": ["*"], "userId": "admin"}}},
)
gateway.register("hello", hello)
gateway.register("pipeline", pipeline, schedule="0 3 * * *")
gateway.register("fanout", fanout)
gateway.register("loop", refine)
gateway.register("deploy", deploy)
gateway.register("flaky", flaky)
gateway.register(
    "payment",
    payment,
    webhook={
        "secret": WEBHOOK_SECRET,
        "signal": {"name": "payment.received", "payloadPath": "payment"},
    },
)

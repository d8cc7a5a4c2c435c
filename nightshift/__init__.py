"""Nightshift's client side: the Python SDK (`Client`), the `nightshift` command and the local stack.

    from nightshift import Client
    client = Client("http://127.0.0.1:8000", token)
    job = client.wait(client.submit("finetune", {...})["id"])

The service itself is `api` (HTTP), `worker` (Celery) and `db` (SQL); this package only talks to it
over HTTP, or starts its processes on one machine (`nightshift up`).
"""

from nightshift.client import TERMINAL, ApiError, Client

__all__ = ["TERMINAL", "ApiError", "Client"]

"""Nightshift's client side: the Python SDK (`Client`), the `nightshift` command and the local stack.

    from nightshift import ApiError, Client
    client = Client("http://127.0.0.1:8080", token)
    job = client.wait(client.submit("finetune", {...})["id"])

Every method and its body is in nightshift/client.py; errors are `ApiError` (status, code, message,
details) and `ConnectionFailed`, both `NightshiftError`.

The service itself is `api` (HTTP), `worker` (Celery) and `db` (SQL); this package only talks to it
over HTTP, or starts its processes on one machine (`nightshift up`).
"""

from nightshift.client import TERMINAL, ApiError, Client, ConnectionFailed, NightshiftError

__all__ = ["TERMINAL", "ApiError", "Client", "ConnectionFailed", "NightshiftError"]

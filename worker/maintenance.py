"""The maintenance loop beat runs beside its schedule: outbox relay, sweeper, and folding the lines' changes."""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery

from db.services import lines
from worker import state
from worker.outbox import relay_outbox
from worker.sweeper import FULL_CHECK_SECONDS, sweep

log = logging.getLogger(__name__)


def run_maintenance(celery_app: Celery, stop: threading.Event) -> None:
    """Relay the outbox and fold the lines' changes every `relay_seconds`, sweep every `sweep_seconds`, until `stop`."""
    settings = state.settings()
    next_sweep = next_full_check = 0.0
    while not stop.is_set():
        try:
            relay_outbox(state.session_factory(), celery_app)
            with state.session_factory()() as session, session.begin():
                lines.compact(session)  # each line's changes since the last tick, folded into one row
            if time.monotonic() >= next_sweep:
                full_check = time.monotonic() >= next_full_check
                if any(sweep(state.session_factory(), settings, full_check=full_check).values()):
                    relay_outbox(state.session_factory(), celery_app)  # rescued jobs wake a worker now
                next_sweep = time.monotonic() + settings.sweep_seconds
                if full_check:
                    next_full_check = time.monotonic() + FULL_CHECK_SECONDS
        except Exception:  # database or broker down: keep looping, the next tick retries
            log.exception("maintenance tick failed; retrying in %ss", settings.relay_seconds)
        stop.wait(settings.relay_seconds)


def start_maintenance_thread(celery_app: Celery) -> threading.Event:
    """Start the maintenance loop in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(target=run_maintenance, args=(celery_app, stop), name="maintenance", daemon=True).start()
    return stop

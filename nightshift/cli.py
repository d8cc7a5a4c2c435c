"""The `nightshift` command: run the stack, run the demo, and talk to the API (nightshift/commands.py)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from nightshift.commands import TOKEN_FILE, CliError, add_commands, common_options
from worker.config import Settings, describe

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    # key=value parameters may follow flags (`submit finetune --task ner epochs=3`), which argparse alone
    # reads as unrecognized once a flag has ended the positionals.
    args, extra = parser.parse_known_args(argv)
    stray = [arg for arg in extra if arg.startswith("-") or "=" not in arg or not hasattr(args, "params")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.params = [*(args.params or []), *extra]
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from nightshift.client import ApiError, NightshiftError

    try:
        return args.func(args) or 0
    except ApiError as exc:  # one line, never a traceback: what the API said to fix
        print(_one_line(f"error: {exc.code}: {exc.message}"), file=sys.stderr)
    except (NightshiftError, CliError, TimeoutError) as exc:
        print(_one_line(f"error: {exc}"), file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nightshift", description=__doc__, parents=[common_options()])
    sub = parser.add_subparsers(metavar="COMMAND")
    up = sub.add_parser("up", help="start Redis (embedded unless NIGHTSHIFT_REDIS_URL), API, worker and beat")
    up.set_defaults(func=cmd_up)
    demo = sub.add_parser("demo", help="start the stack and run the main job: fine-tune, evaluate, batch-classify")
    demo.add_argument("--base-model", default="all-MiniLM-L6-v2", help="registered name, local dir or packaged model")
    demo.add_argument("--epochs", type=float, default=2.0)
    demo.add_argument("--exit", action="store_true", help="stop the stack when the demo is done")
    demo.set_defaults(func=cmd_demo)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("api", help="serve the API with gunicorn").set_defaults(func=cmd_component, component="api")
    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--queues", default="gpu,cpu", help="comma-separated queues (gpu, cpu)")
    worker.add_argument("--name", default="worker")
    worker.set_defaults(func=cmd_component, component="worker")
    sub.add_parser("beat", help="run beat with the outbox relay and the sweeper").set_defaults(
        func=cmd_component, component="beat")
    sub.add_parser("config", help="print every setting with its default").set_defaults(func=cmd_config)
    token = sub.add_parser("token", help="create an API token for a tenant")
    token.add_argument("--tenant", default="default")
    token.add_argument("--role", choices=["member", "viewer"], default="member",
                       help="member: read and write; viewer: read only")
    token.set_defaults(func=cmd_token)
    add_commands(sub)
    return parser


# -- running the system -----------------------------------------------------------------------
def cmd_migrate(_args) -> int:
    from db.migrate import upgrade

    settings = Settings.from_env()
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    print(f"database at {settings.database_url} is up to date")
    return 0


def cmd_component(args) -> int:
    from nightshift.stack import api_command, beat_command, worker_command

    settings = Settings.from_env()
    if args.component == "worker":
        command = worker_command(settings, queues=args.queues, name=args.name)
    else:
        command = {"api": api_command, "beat": beat_command}[args.component](settings)
    os.execv(command[0], command)  # replace this process: signals reach the server directly
    return 0


def cmd_config(_args) -> int:
    for name, default, helptext in describe():
        print(f"{name}={default}    # {helptext}")
    return 0


def cmd_token(args) -> int:
    from db.services.tenants import get_or_create_tenant, issue_token
    from db.session import make_engine, make_session_factory

    settings = Settings.from_env()
    factory = make_session_factory(make_engine(settings.database_url))
    with factory() as session, session.begin():
        print(issue_token(session, get_or_create_tenant(session, args.tenant), role=args.role))
    return 0


def cmd_up(_args) -> int:
    def announce(settings: Settings, token: str) -> bool:
        _print_endpoints(settings, token)
        print("Processes that die are restarted; Ctrl-C stops everything.", flush=True)
        return True

    return _run_stack(announce)


def _run_stack(work: Callable[[Settings, str], bool]) -> int:
    """Start the stack, call `work(settings, token)`, then keep the stack running (restarting what
    dies) until Ctrl-C or SIGTERM, or stop at once if `work` returns False.

    One try block spans everything after the first process starts, so an interrupt at any moment,
    during start-up included, stops every process: they lead their own process groups and would
    not see a terminal's Ctrl-C themselves. The interrupt is also kept in an event that start-up
    and the supervisor check: a KeyboardInterrupt raised where Python only prints it ("Exception
    ignored in ...", e.g. in a finalizer) or caught by library code still stops the stack.
    """
    from nightshift.stack import Stack, StartupError
    from nightshift.supervisor import Supervisor

    settings = Settings.from_env()
    stack = Stack(settings)
    stop = threading.Event()
    print(f"starting Nightshift in {Path(settings.data_dir).resolve()} ...", flush=True)
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    # SIGINT explicitly too: a shell starts background jobs with it ignored, and Python keeps that.
    for signum in STOP_SIGNALS:
        if signum != signal.SIGHUP or previous[signum] is not signal.SIG_IGN:  # under nohup, outlive the terminal
            signal.signal(signum, lambda _signum, _frame: _interrupt(stop))
    try:
        try:
            settings = stack.start(redis_url=os.environ.get("NIGHTSHIFT_REDIS_URL"), stop=stop)
        except StartupError as exc:
            raise SystemExit(f"Nightshift did not start: {exc}") from None
        if not stop.is_set() and work(settings, ensure_local_token(settings)):
            Supervisor(stack.children()).run(stop)  # restarts what dies; only Ctrl-C or SIGTERM ends it
        if stop.is_set():
            raise KeyboardInterrupt  # its first raise was swallowed on the way: stop as it would have
        return 0
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        # A second Ctrl-C reaches only this process: let it not cut the (bounded) stop short.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        stack.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupt(stop: threading.Event) -> None:
    """Stop the stack: SIGTERM the same way as Ctrl-C. Only the first signal raises; the next ones
    find the stop under way and leave it to finish."""
    if not stop.is_set():
        stop.set()
        raise KeyboardInterrupt


def ensure_local_token(settings: Settings) -> str:
    """Return the local admin token kept in the data dir, creating tenant and token once."""
    from db.services.tenants import authenticate, get_or_create_tenant, issue_token
    from db.session import make_engine, make_session_factory

    path = Path(settings.data_dir) / TOKEN_FILE
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    with factory() as session, session.begin():
        raw = path.read_text().strip() if path.exists() else ""
        issued = not raw or authenticate(session, raw) is None
        if issued:
            raw = issue_token(session, get_or_create_tenant(session, "default"), name="local")
    engine.dispose()
    if issued:  # only once committed, and whole: whoever sees the file can use the token in it
        scratch = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
        scratch.touch(mode=0o600)
        scratch.write_text(raw + "\n")
        os.replace(scratch, path)
    return raw


def _print_endpoints(settings: Settings, token: str) -> None:
    print(f"dashboard  {settings.base_url}/   (log in with the token below)")
    print(f"API        {settings.base_url}/api/v1   (OpenAPI: {settings.base_url}/api/v1/openapi.json)")
    print(f"token      {token}   (also in {Path(settings.data_dir).resolve() / TOKEN_FILE})")
    print(f"database   {settings.database_url}")
    print(f"redis      {settings.redis_url}")
    print(f"logs       {Path(settings.data_dir).resolve() / 'logs'}")


def cmd_demo(args) -> int:
    from nightshift.demo import run_demo

    def demo(settings: Settings, token: str) -> bool:
        run_demo(settings, token, base_model=args.base_model, epochs=args.epochs)
        _print_endpoints(settings, token)
        if not args.exit:
            print("The stack keeps running for you to explore; Ctrl-C stops it.", flush=True)
        return not args.exit

    return _run_stack(demo)


if __name__ == "__main__":
    sys.exit(main())

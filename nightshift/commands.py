"""The `nightshift` commands that talk to a running API: datasets, jobs, models, evaluations.

The server and token come from `--url`/`--token`, else `NIGHTSHIFT_API_URL`/`NIGHTSHIFT_TOKEN`, else the
config file (`NIGHTSHIFT_CONFIG` or ~/.config/nightshift/config.toml: `url = "..."`, `token = "..."`),
else the local stack's address and the token `nightshift up` keeps in its data dir.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

from nightshift import views
from worker.config import JOB_KINDS, Settings

TOKEN_FILE = "token"
DEFAULT_CONFIG = Path("~/.config/nightshift/config.toml")
JOB_STATUSES = ("waiting", "queued", "running", "succeeded", "failed", "cancelled")
EVENT_TYPES = ("log", "metric", "status", "rescue")


class CliError(Exception):
    """A mistake on the command line or in a file it names; printed as one line."""


# -- connecting ------------------------------------------------------------------------------------
def connect(args):
    """Return a Client for the server and token that flags, environment, config file or data dir name."""
    from nightshift.client import Client

    settings = Settings.from_env()
    config = read_config(settings)
    url = getattr(args, "url", None) or settings.api_url or config.get("url") or settings.base_url
    token = getattr(args, "token", None) or settings.token or config.get("token") or _data_dir_token(settings)
    return Client(str(url), str(token))


def read_config(settings: Settings) -> dict[str, Any]:
    """Return the CLI's config file as a dict ({} when the default file does not exist)."""
    path = Path(settings.config).expanduser() if settings.config else DEFAULT_CONFIG.expanduser()
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        if settings.config:
            raise CliError(f"config file {path} (NIGHTSHIFT_CONFIG) does not exist") from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"config file {path} is not valid TOML: {exc}") from None


def _data_dir_token(settings: Settings) -> str:
    path = Path(settings.data_dir) / TOKEN_FILE
    if not path.exists():
        raise CliError("no token: pass --token, set NIGHTSHIFT_TOKEN, put token = \"...\" in "
                       f"{DEFAULT_CONFIG}, or run `nightshift up` once to create one")
    return path.read_text().strip()


# -- the parser --------------------------------------------------------------------------------------
def common_options(*, json_output: bool = True) -> argparse.ArgumentParser:
    """Return the options every API command takes (`--url`, `--token`, and `--json` on read commands)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--url", default=argparse.SUPPRESS, help="API server, e.g. http://127.0.0.1:8080")
    parent.add_argument("--token", default=argparse.SUPPRESS, help="API token")
    if json_output:
        parent.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="print the API's JSON instead of text")
    return parent


def add_commands(sub) -> None:
    """Add the API command groups and the short top-level aliases to the subparsers `sub`."""
    common = [common_options()]
    _dataset_commands(sub.add_parser("datasets", help="upload, list, show and delete datasets", parents=common))
    jobs = sub.add_parser("jobs", help="submit, list, show, cancel, retry jobs; their events and output "
                                       "(alone: list jobs)", parents=common)
    _list_filters(jobs)
    jobs.set_defaults(func=cmd_jobs_list)
    _job_commands(jobs.add_subparsers(metavar="ACTION"), common)
    from nightshift.pipelines import add_pipeline_commands  # it builds on this module's helpers

    add_pipeline_commands(sub, common)
    _model_commands(sub.add_parser("models", help="list, show and compare registered models", parents=common))
    _evaluation_commands(sub.add_parser("evaluations", help="list and show evaluations", parents=common))
    sub.add_parser("workers", help="list the workers: host, queues, device, heartbeat, running jobs",
                   parents=common).set_defaults(func=cmd_workers)
    sub.add_parser("health", help="check the API's database and Redis", parents=common).set_defaults(func=cmd_health)
    sub.add_parser("openapi", help="print the API's OpenAPI document", parents=common).set_defaults(func=cmd_openapi)
    # The first commands, kept as short aliases.
    _upload_arguments(sub.add_parser("upload", help="upload a dataset file (datasets upload)", parents=common))
    _submit_arguments(sub.add_parser("submit", help="submit a job (jobs submit)", parents=common))
    for name, action, helptext in (("status", "show", "show a job (jobs show)"),
                                   ("cancel", "cancel", "cancel a job (jobs cancel)"),
                                   ("retry", "retry", "submit an ended job again as a new job (jobs retry)")):
        alias = sub.add_parser(name, help=helptext, parents=common)
        alias.add_argument("job_id", type=int)
        alias.set_defaults(func=JOB_ACTIONS[action])
        if action == "retry":
            _retry_arguments(alias)
    _watch_arguments(sub.add_parser("watch", help="show a job's progress live until it ends; exit 0 succeeded, "
                                                  "1 failed, 2 cancelled", parents=common))
    _output_arguments(sub.add_parser("output", help="download a batch job's predictions (jobs output)",
                                     parents=common))


def _group(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
    return parser.add_subparsers(metavar="ACTION")


def _dataset_commands(parser) -> None:
    sub, common = _group(parser), [common_options()]
    _upload_arguments(sub.add_parser("upload", help="upload a CSV, TSV, JSONL, Parquet or CoNLL file", parents=common))
    listing = sub.add_parser("list", help="list datasets, newest first", parents=common)
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--all", action="store_true", help="every dataset, page after page")
    listing.set_defaults(func=cmd_datasets_list)
    for name, func, helptext in (("show", cmd_datasets_show, "show a dataset and its stats"),
                                 ("delete", cmd_datasets_delete, "delete a dataset")):
        command = sub.add_parser(name, help=helptext, parents=common)
        command.add_argument("dataset_id", type=int)
        command.set_defaults(func=func)


def _upload_arguments(upload) -> None:
    upload.add_argument("file", type=Path)
    upload.add_argument("--name", help="display name (default: the file name)")
    upload.add_argument("--task", help="the task whose labelled data this is (omit for plain text)")
    upload.add_argument("--text-column", default="text")
    upload.add_argument("--label-column")
    upload.add_argument("--label-separator", help="multi-label-classification: the string joining a row's labels, "
                                                  "e.g. '|' (default: each label cell is a JSON list)")
    upload.add_argument("--format", help="csv, tsv, jsonl, parquet, conll, squad (default: from the file name)")
    upload.add_argument("--target-file", type=Path, help="translation: a file parallel to FILE")
    upload.add_argument("--column", action="append", default=[], metavar="ROLE=NAME",
                        help="a task's column by role, e.g. --column tokens=words (repeatable)")
    upload.set_defaults(func=cmd_upload)


def _list_filters(parser) -> None:
    parser.add_argument("--status", choices=JOB_STATUSES)
    parser.add_argument("--kind", choices=JOB_KINDS)
    parser.add_argument("--task")
    parser.add_argument("--model", help="jobs that use or register this model name")
    parser.add_argument("--q", help="text in the job's parameters or error")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--all", action="store_true", help="every matching job, page after page")


def _job_commands(sub, common) -> None:
    _submit_arguments(sub.add_parser("submit", help="submit a job from key=value parameters or a job file",
                                     parents=common))
    listing = sub.add_parser("list", help="list jobs, newest first", parents=common)
    _list_filters(listing)
    listing.set_defaults(func=cmd_jobs_list)
    for name, helptext in (("show", "show a job and its progress"), ("cancel", "cancel a job"),
                           ("retry", "submit an ended job again as a new job")):
        command = sub.add_parser(name, help=helptext, parents=common)
        command.add_argument("job_id", type=int)
        command.set_defaults(func=JOB_ACTIONS[name])
        if name == "retry":
            _retry_arguments(command)
    events = sub.add_parser("events", help="print a job's events", parents=common)
    events.add_argument("job_id", type=int)
    events.add_argument("--type", choices=EVENT_TYPES)
    events.add_argument("--after", type=int, default=0, help="only events with id above this")
    events.add_argument("--follow", action="store_true", help="keep printing new events until the job ends")
    events.add_argument("--interval", type=float, default=1.0, help="seconds between polls with --follow")
    events.set_defaults(func=cmd_events)
    _output_arguments(sub.add_parser("output", help="download a batch job's predictions", parents=common))
    _watch_arguments(sub.add_parser("watch", help="show a job's progress live until it ends", parents=common))


def _submit_arguments(submit) -> None:
    submit.add_argument("kind", nargs="?", help="finetune, evaluate, batch_inference, pretrain or merge (or from -f)")
    submit.add_argument("params", nargs="*", help="key=value (values parsed as JSON when they can be)")
    submit.add_argument("-f", "--file", type=Path, help="YAML or JSON job file: {kind, task, params, priority}")
    submit.add_argument("--task", help="text-classification (default), token-classification, translation, ...")
    submit.add_argument("--priority", type=int, help="0 (low) to 9 (high); default 5")
    submit.add_argument("--not-before", help="do not start before this time (ISO 8601) or run window (e.g. nightly)")
    submit.add_argument("--pause-outside-window", action="store_true",
                        help="with --not-before WINDOW: checkpoint and wait when the window closes mid-run")
    submit.add_argument("--max-attempts", type=int)
    submit.add_argument("--idempotency-key", help="the same key returns the same job")
    submit.add_argument("--wait", action="store_true", help="print the job's events until it ends")
    submit.set_defaults(func=cmd_submit)


def _retry_arguments(retry) -> None:
    retry.add_argument("params", nargs="*", help="key=value parameters to change (values parsed as JSON when they "
                                                 "can be), e.g. model=fixed-model:2; give them all together, before "
                                                 "or after the flags (argparse reads no positionals after a flag)")
    retry.add_argument("--only-failed-rows", action="store_true",
                       help="batch_inference: predict only the rows that failed and merge them into a copy of the "
                            "job's predictions")


def _output_arguments(output) -> None:
    output.add_argument("job_id", type=int)
    output.add_argument("-o", "--out", type=Path, required=True)
    output.add_argument("--errors", action="store_true", help="the rows that failed instead of the predictions")
    output.set_defaults(func=cmd_output)


def _watch_arguments(watch) -> None:
    watch.add_argument("job_id", type=int)
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    watch.set_defaults(func=cmd_watch)


def _model_commands(parser) -> None:
    sub, common = _group(parser), [common_options()]
    sub.add_parser("list", help="list registered models", parents=common).set_defaults(func=cmd_models_list)
    show = sub.add_parser("show", help="list the versions of a model", parents=common)
    show.add_argument("name")
    show.set_defaults(func=cmd_models_show)
    compare = sub.add_parser("compare", help="headline metrics of two models' latest evaluations on a dataset",
                             parents=common)
    compare.add_argument("models", nargs=2, metavar="MODEL", help="name or name:version")
    compare.add_argument("--dataset", type=int, required=True, help="the evaluated dataset's id")
    compare.set_defaults(func=cmd_models_compare)


def _evaluation_commands(parser) -> None:
    sub, common = _group(parser), [common_options()]
    listing = sub.add_parser("list", help="list evaluations, newest first", parents=common)
    listing.add_argument("--model", help="name or name:version")
    listing.add_argument("--dataset", type=int)
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(func=cmd_evaluations_list)
    show = sub.add_parser("show", help="show an evaluation's metrics", parents=common)
    show.add_argument("evaluation_id", type=int)
    show.set_defaults(func=cmd_evaluations_show)


# -- datasets ----------------------------------------------------------------------------------------
def cmd_upload(args) -> int:
    roles = dict(_pair(item, "--column") for item in args.column)
    dataset = connect(args).upload_dataset(
        args.file, task=args.task, text_column=args.text_column, label_column=args.label_column, name=args.name,
        fmt=args.format, target_file=args.target_file, label_separator=args.label_separator,
        **{f"{role}_column": name for role, name in roles.items()})
    return views.emit(args, dataset, views.dataset)


def cmd_datasets_list(args) -> int:
    client = connect(args)
    items = list(client.iter_datasets()) if args.all else client.list_datasets(limit=args.limit)["items"]
    return views.emit(args, items, views.datasets)


def cmd_datasets_show(args) -> int:
    return views.emit(args, connect(args).dataset(args.dataset_id), views.dataset)


def cmd_datasets_delete(args) -> int:
    connect(args).delete_dataset(args.dataset_id)
    print(f"deleted dataset {args.dataset_id}")
    return 0


# -- jobs --------------------------------------------------------------------------------------------
def cmd_submit(args) -> int:
    spec = job_spec(args)
    client = connect(args)
    job = client.submit(spec.pop("kind"), spec.pop("params"), idempotency_key=args.idempotency_key, **spec)
    if args.wait:
        job = client.wait(job["id"], on_event=lambda event: print(views.event_line(event), flush=True))
    views.emit(args, job, views.job)
    return views.EXIT_CODES.get(job["status"], 0)


def job_spec(args) -> dict[str, Any]:
    """Return the submission {kind, params, task?, priority?, max_attempts?, not_before?, pause_outside_window?} from
    -f FILE and the flags."""
    spec = _job_file(args.file) if args.file else {}
    pairs = list(args.params)
    if args.kind and "=" in args.kind:  # `-f job.yaml epochs=3`: no kind, only parameters
        pairs.insert(0, args.kind)
    elif args.kind:
        spec["kind"] = args.kind
    if "kind" not in spec:
        raise CliError("name the job's kind (finetune, evaluate, batch_inference, pretrain, merge) or give a job file with -f")
    params = dict(spec.get("params") or {})
    params.update(_value(item) for item in pairs)
    spec["params"] = params
    for field in ("task", "priority", "max_attempts", "not_before"):
        if getattr(args, field) is not None:
            spec[field] = getattr(args, field)
    if args.pause_outside_window:
        spec["pause_outside_window"] = True
    return spec


def _job_file(path: Path) -> dict[str, Any]:
    import yaml  # YAML is a superset of JSON: one reader for both

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CliError(f"cannot read job file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CliError(f"job file {path} is not valid YAML or JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CliError(f"job file {path} must hold a mapping with kind, task, params and priority")
    unknown = set(data) - {"kind", "task", "params", "priority", "max_attempts"}
    if unknown:
        raise CliError(f"job file {path} has unknown keys {sorted(unknown)}; use kind, task, params, priority")
    if not isinstance(data.get("params", {}), dict):
        raise CliError(f"job file {path}: params must be a mapping of parameter names to values")
    return data


def _pair(item: str, what: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise CliError(f"{what} '{item}' is not key=value")
    return key, value


def _value(item: str) -> tuple[str, Any]:
    key, raw = _pair(item, "parameter")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def cmd_jobs_list(args) -> int:
    client = connect(args)
    filters = {name: getattr(args, name) for name in ("status", "kind", "task", "model", "q")}
    items = list(client.iter_jobs(**filters)) if args.all else client.list_jobs(**filters, limit=args.limit)["items"]
    return views.emit(args, items, views.jobs)


def cmd_show(args) -> int:
    return views.emit(args, connect(args).job(args.job_id), views.job)


def cmd_cancel(args) -> int:
    return views.emit(args, connect(args).cancel(args.job_id), views.job)


def cmd_retry(args) -> int:
    params = dict(_value(item) for item in args.params)
    job = connect(args).retry(args.job_id, only_failed_rows=args.only_failed_rows, params=params)
    if not getattr(args, "json", False):
        what = "the failed rows of job" if args.only_failed_rows else "job"
        print(f"job {job['id']} retries {what} {args.job_id}")
    return views.emit(args, job, views.job)


JOB_ACTIONS = {"show": cmd_show, "cancel": cmd_cancel, "retry": cmd_retry}


def cmd_events(args) -> int:
    events = connect(args).iter_events(args.job_id, after=args.after, type=args.type, follow=args.follow,
                                       poll=args.interval)
    for event in events:
        print(json.dumps(event) if getattr(args, "json", False) else views.event_line(event), flush=True)
    return 0


def cmd_output(args) -> int:
    print(connect(args).download_output(args.job_id, args.out, errors=args.errors))
    return 0


def cmd_watch(args) -> int:
    job = views.watch(connect(args), args.job_id, interval=args.interval, as_json=getattr(args, "json", False))
    return views.EXIT_CODES[job["status"]]


# -- models, evaluations, service --------------------------------------------------------------------
def cmd_models_list(args) -> int:
    return views.emit(args, connect(args).models(), views.models)


def cmd_models_show(args) -> int:
    return views.emit(args, connect(args).model_versions(args.name), views.models)


def cmd_models_compare(args) -> int:
    client = connect(args)
    latest = {}
    for ref in args.models:
        found = client.list_evaluations(model=ref, dataset_id=args.dataset, limit=1)["items"]
        if not found:
            raise CliError(f"model '{ref}' has no evaluation on dataset {args.dataset}: run "
                           f"`nightshift submit evaluate model={ref} dataset_id={args.dataset}` first")
        latest[ref] = found[0]
    return views.emit(args, latest, views.comparison)


def cmd_evaluations_list(args) -> int:
    page = connect(args).list_evaluations(model=args.model, dataset_id=args.dataset, limit=args.limit)
    return views.emit(args, page["items"], views.evaluations)


def cmd_evaluations_show(args) -> int:
    return views.emit(args, connect(args).evaluation(args.evaluation_id), views.evaluation)


def cmd_workers(args) -> int:
    return views.emit(args, connect(args).workers(), views.workers)


def cmd_health(args) -> int:
    health = connect_public(args).health()
    views.emit(args, health, views.health)
    return 0 if health["status"] == "ok" else 1


def cmd_openapi(args) -> int:
    print(json.dumps(connect_public(args).openapi(), indent=2))
    return 0


def connect_public(args):
    """Return a Client for the public endpoints, which need no token."""
    from nightshift.client import Client

    try:
        return connect(args)
    except CliError:
        settings = Settings.from_env()
        url = getattr(args, "url", None) or settings.api_url or read_config(settings).get("url") or settings.base_url
        return Client(str(url))

"""The `nightshift pipelines` commands: submit a pipeline file, list, show, cancel, retry and watch pipelines,
and print their steps' events.

A pipeline file is YAML or JSON: `{name, steps: [{name, kind, task, params, after, priority}, ...]}`,
the body of POST /api/v1/pipelines.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from nightshift import views
from nightshift.commands import CliError, connect

FILE_KEYS = ("name", "steps")
STEP_KEYS = ("name", "after", "kind", "task", "params", "priority", "max_attempts")


def add_pipeline_commands(sub, common) -> None:
    """Add `nightshift pipelines` and its actions to the subparsers `sub`."""
    parser = sub.add_parser("pipelines", help="submit, list, show, cancel, retry and watch pipelines of jobs "
                                              "(alone: list pipelines)", parents=common)
    _list_arguments(parser)
    actions = parser.add_subparsers(metavar="ACTION")
    submit = actions.add_parser("submit", help="submit a pipeline from a YAML or JSON file: {name, steps: [...]}",
                                parents=common)
    submit.add_argument("file", type=Path)
    submit.add_argument("--name", help="the pipeline's name (default: the file's `name`)")
    submit.add_argument("--watch", action="store_true", help="then show its steps' progress until it ends; exit 0 "
                                                             "succeeded, 1 failed, 2 cancelled")
    submit.add_argument("--interval", type=float, default=1.0, help="seconds between polls with --watch")
    submit.set_defaults(func=cmd_pipelines_submit)
    _list_arguments(actions.add_parser("list", help="list pipelines, newest first", parents=common))
    for name, func, helptext in (("show", cmd_pipelines_show, "show a pipeline and its steps"),
                                 ("cancel", cmd_pipelines_cancel, "cancel every step that has not ended"),
                                 ("retry", cmd_pipelines_retry, "run the steps of an ended pipeline that did not "
                                                                "succeed again (the steps that did are kept)")):
        command = actions.add_parser(name, help=helptext, parents=common)
        command.add_argument("pipeline_id", type=int)
        command.set_defaults(func=func)
    watch = actions.add_parser("watch", help="show each step's progress live until the pipeline ends; exit 0 "
                                             "succeeded, 1 failed, 2 cancelled", parents=common)
    watch.add_argument("pipeline_id", type=int)
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    watch.set_defaults(func=cmd_pipelines_watch)
    events = actions.add_parser("events", help="print the events of a pipeline's steps", parents=common)
    events.add_argument("pipeline_id", type=int)
    events.add_argument("--after", type=int, default=0, help="only events with id above this")
    events.add_argument("--follow", action="store_true", help="keep printing new events until the pipeline ends")
    events.add_argument("--interval", type=float, default=1.0, help="seconds between polls with --follow")
    events.set_defaults(func=cmd_pipelines_events)


def _list_arguments(parser) -> None:
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--all", action="store_true", help="every pipeline, page after page")
    parser.set_defaults(func=cmd_pipelines_list)


def cmd_pipelines_submit(args) -> int:
    spec = pipeline_file(args.file)
    client = connect(args)
    pipeline = client.submit_pipeline(spec["steps"], name=args.name or spec.get("name"))
    if args.watch:
        pipeline = views.watch_pipeline(client, pipeline["id"], interval=args.interval,
                                        as_json=getattr(args, "json", False))
        return views.EXIT_CODES[pipeline["status"]]
    return views.emit(args, pipeline, views.pipeline)


def pipeline_file(path: Path) -> dict[str, Any]:
    """Read a pipeline file (YAML or JSON) and check its shape; the API checks the steps' contents."""
    import yaml  # YAML is a superset of JSON: one reader for both

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CliError(f"cannot read pipeline file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CliError(f"pipeline file {path} is not valid YAML or JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list) or not data["steps"]:
        raise CliError(f"pipeline file {path} must hold a mapping with `steps`: a list of steps (and a `name`)")
    unknown = set(data) - set(FILE_KEYS)
    if unknown:
        raise CliError(f"pipeline file {path} has unknown keys {sorted(unknown)}; use name and steps")
    for index, step in enumerate(data["steps"]):
        if not isinstance(step, dict):
            raise CliError(f"pipeline file {path}: steps[{index}] must be a mapping with name, kind and params")
        unknown = set(step) - set(STEP_KEYS)
        if unknown:
            raise CliError(f"pipeline file {path}: steps[{index}] has unknown keys {sorted(unknown)}; use "
                           f"{', '.join(STEP_KEYS)}")
    return data


def cmd_pipelines_list(args) -> int:
    client = connect(args)
    items = list(client.iter_pipelines()) if args.all else client.list_pipelines(limit=args.limit)["items"]
    return views.emit(args, items, views.pipelines)


def cmd_pipelines_show(args) -> int:
    return views.emit(args, connect(args).pipeline(args.pipeline_id), views.pipeline)


def cmd_pipelines_cancel(args) -> int:
    return views.emit(args, connect(args).cancel_pipeline(args.pipeline_id), views.pipeline)


def cmd_pipelines_retry(args) -> int:
    return views.emit(args, connect(args).retry_pipeline(args.pipeline_id), views.pipeline)


def cmd_pipelines_watch(args) -> int:
    pipeline = views.watch_pipeline(connect(args), args.pipeline_id, interval=args.interval,
                                    as_json=getattr(args, "json", False))
    return views.EXIT_CODES[pipeline["status"]]


def cmd_pipelines_events(args) -> int:
    from nightshift.client import TERMINAL

    client, after = connect(args), args.after
    while True:
        ended = args.follow and client.pipeline(args.pipeline_id)["status"] in TERMINAL  # before the events
        for event in views.new_pipeline_events(client, args.pipeline_id, after):
            print(json.dumps(event) if getattr(args, "json", False) else views.step_event_line(event), flush=True)
            after = event["id"]
        if not args.follow or ended:
            return 0
        time.sleep(args.interval)

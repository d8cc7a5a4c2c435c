"""How the `nightshift` command prints what the API returns: short tables, key-value blocks, and the
live progress bar of `nightshift watch`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 2}  # what `watch` and `submit --wait` exit with
METRICS_SHOWN = 6  # metrics in a list's one-line summary


def emit(args, data: Any, render: Callable[[Any], None]) -> int:
    """Print `data` as JSON under --json, else through `render`; return exit status 0."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
    else:
        render(data)
    return 0


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows under headers in left-aligned columns."""
    cells = [[str(h).upper() for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())


def pairs(items: Sequence[tuple[str, Any]]) -> None:
    """Print `key  value` lines, skipping empty values."""
    width = max(len(key) for key, _ in items)
    for key, value in items:
        if value not in (None, "", {}, []):
            print(f"{key.ljust(width)}  {_text(value)}")


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def number(value: Any) -> str:
    """Format a metric: four decimals for fractions, integers as they are."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _metrics_line(metrics: dict[str, Any]) -> str:
    shown = [(k, v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return " ".join(f"{k}={number(v)}" for k, v in shown[:METRICS_SHOWN])


# -- datasets ----------------------------------------------------------------------------------------
def datasets(items: list[dict]) -> None:
    table(["id", "name", "task", "rows", "columns", "created"],
          [(d["id"], d["name"], d["task"] or "text", d["row_count"], ",".join(d["columns"]), d["created_at"])
           for d in items])


def dataset(d: dict) -> None:
    pairs([("dataset", d["id"]), ("name", d["name"]), ("task", d["task"] or "plain text"), ("format", d["format"]),
           ("rows", d["row_count"]), ("bytes", d["size_bytes"]), ("columns", ", ".join(d["columns"])),
           ("roles", d["columns_by_role"]), ("labels", d["stats"].get("label_distribution")),
           ("sha256", d["sha256"]), ("created", d["created_at"])])


# -- jobs --------------------------------------------------------------------------------------------
def jobs(items: list[dict]) -> None:
    table(["id", "kind", "task", "status", "progress", "stage", "created"],
          [(j["id"], j["kind"], j["task"], j["status"], f"{j['progress']['fraction']:.1%}", j["progress"]["stage"],
            j["created_at"]) for j in items])


def job(j: dict) -> None:
    p = j["progress"]
    count = f"{p['done']}/{p['total']}" if p["total"] else None
    error = f"{j['error']['code']}: {j['error']['message']}" if j["error"] else None
    pairs([("job", j["id"]), ("kind", j["kind"]), ("task", j["task"]), ("status", j["status"]),
           ("progress", f"{p['fraction']:.1%}" + (f" ({count})" if count else "")), ("stage", p["stage"]),
           ("eta", eta(p["eta_seconds"]) if p["eta_seconds"] is not None else None),
           ("priority", j["priority"]), ("attempts", f"{j['attempts']}/{j['max_attempts']}"),
           ("error", error), ("params", j["params"]), ("result", j["result"]),
           ("created", j["created_at"]), ("started", j["started_at"]), ("finished", j["finished_at"])])


def event_line(e: dict) -> str:
    """Return one event as a line: time, type, message, data."""
    data = f" {json.dumps(e['data'])}" if e["data"] else ""
    return f"{e['created_at']} {e['type']:7} {e['message']}{data}"


def eta(seconds: float | None) -> str:
    """Format seconds as h:mm:ss ("-" when unknown)."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def watch(client, job_id: int, *, interval: float = 1.0, as_json: bool = False) -> dict:
    """Show a job's progress until it ends: a live bar (stage, steps or rows, loss, ETA) with its log
    and status lines above it, or one JSON event per line with `as_json`; return the ended job."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    from nightshift.client import TERMINAL

    console = Console(highlight=False)
    columns = (TextColumn("job {task.fields[job]} {task.fields[status]:9}"), TextColumn("{task.fields[stage]}"),
               BarColumn(), TextColumn("{task.percentage:>5.1f}%"), TextColumn("{task.fields[count]}"),
               TextColumn("loss {task.fields[loss]}"), TextColumn("ETA {task.fields[eta]}"))
    after, loss = 0, None
    with Progress(*columns, console=console, disable=as_json) as bar:
        row = bar.add_task("", total=1.0, job=job_id, status="", stage="", count="", loss="-", eta="-")
        while True:
            current = client.job(job_id)  # before the events: every event of an ended job is then read
            page = client.events(job_id, after=after)
            after = page["next_cursor"]
            for event in page["items"]:
                if as_json:
                    print(json.dumps(event), flush=True)
                elif event["type"] == "metric":
                    loss = event["data"].get("loss", loss)
                else:
                    bar.console.print(event_line(event), markup=False, soft_wrap=True)
            p = current["progress"]
            unit = "steps" if current["kind"] == "finetune" else "rows"
            bar.update(row, completed=p["fraction"], status=current["status"], stage=p["stage"] or "",
                       count=f"{p['done']}/{p['total']} {unit}" if p["total"] else "",
                       loss=number(loss), eta=eta(p["eta_seconds"]))
            if current["status"] in TERMINAL:
                break
            time.sleep(interval)
    if not as_json:
        error = current["error"]
        console.print(f"job {job_id} {current['status']}" + (f": {error['code']}: {error['message']}" if error else ""),
                      markup=False)
    return current


# -- models and evaluations --------------------------------------------------------------------------
def models(items: list[dict]) -> None:
    table(["id", "name", "version", "task", "base model", "metrics", "created"],
          [(m["id"], m["name"], m["version"], m["task"], m["base_model"], _metrics_line(m["metrics"]), m["created_at"])
           for m in items])


def workers(items: list[dict]) -> None:
    table(["name", "host", "queues", "device", "alive", "last seen", "running"],
          [(w["name"], w["host"], ",".join(w["queues"]), _device(w["device"]), "yes" if w["alive"] else "no",
            w["last_seen_at"], " ".join(map(str, w["running_job_ids"])) or "-") for w in items])


def _device(device: dict) -> str:
    if device.get("kind") == "cuda":
        memory = f", {device['memory_bytes'] / (1 << 30):.0f} GiB" if device.get("memory_bytes") else ""
        return f"{device.get('name', 'GPU')}{memory}"
    return f"CPU, {device['cores']} cores" if device.get("cores") else str(device.get("kind", "?"))


def evaluations(items: list[dict]) -> None:
    table(["id", "model", "dataset", "job", "split", "metrics", "created"],
          [(e["id"], e["model_ref"], e["dataset_id"], e["job_id"], e["split"], _metrics_line(e["metrics"]),
            e["created_at"]) for e in items])


def evaluation(e: dict) -> None:
    metrics = e["metrics"]
    pairs([("evaluation", e["id"]), ("model", e["model_ref"]), ("dataset", e["dataset_id"]), ("job", e["job_id"]),
           ("split", e["split"]), ("created", e["created_at"])])
    for key, value in metrics.items():
        if key == "confusion_matrix" and isinstance(value, dict):
            print("confusion matrix (rows true, columns predicted):")
            table(["", *value["labels"]], [(label, *row) for label, row in zip(value["labels"], value["matrix"])])
        else:
            print(f"  {key}  {number(value) if not isinstance(value, dict | list) else json.dumps(value)}")


def comparison(latest: dict[str, dict]) -> None:
    """Print the headline metrics of each model's evaluation side by side."""
    from worker.jobs.common import HEADLINE_METRICS

    refs = list(latest)
    names = [k for k in HEADLINE_METRICS if any(k in e["metrics"] for e in latest.values())]
    rows = [("evaluation", *(latest[r]["id"] for r in refs)), ("model", *(latest[r]["model_ref"] for r in refs))]
    rows += [(name, *(number(latest[r]["metrics"].get(name)) for r in refs)) for name in names]
    table(["metric", *refs], rows)


def health(h: dict) -> None:
    pairs([("status", h["status"]), ("database", h["database"]), ("redis", h["redis"])])


# -- pipelines ---------------------------------------------------------------------------------------
def pipelines(items: list[dict]) -> None:
    table(["id", "name", "status", "progress", "steps", "created"],
          [(p["id"], p["name"], p["status"], f"{p['progress']:.1%}",
            " ".join(f"{s['name']}:{s['job']['status']}" for s in p["steps"]), p["created_at"]) for p in items])


def pipeline(p: dict) -> None:
    pairs([("pipeline", p["id"]), ("name", p["name"]), ("status", p["status"]),
           ("progress", f"{p['progress']:.1%}"), ("created", p["created_at"])])
    print()
    table(["step", "after", "kind", "task", "job", "status", "progress", "stage"],
          [(s["name"], s["after"], s["job"]["kind"], s["job"]["task"], s["job"]["id"], s["job"]["status"],
            f"{_step_fraction(s['job']):.1%}", s["job"]["progress"]["stage"]) for s in p["steps"]])
    for line in _step_errors(p):
        print(line)


def _step_fraction(job: dict) -> float:
    return 1.0 if job["status"] == "succeeded" else job["progress"]["fraction"]


def _step_errors(p: dict) -> list[str]:
    """Return a line for each step that failed or was cancelled with a reason."""
    return [f"step '{s['name']}' (job {s['job']['id']}) {s['job']['status']}: {s['job']['error']['code']}: "
            f"{s['job']['error']['message']}" for s in p["steps"] if s["job"]["error"]]


def step_event_line(e: dict) -> str:
    """Return one event of a pipeline's step as a line: time, step, type, message, data."""
    data = f" {json.dumps(e['data'])}" if e["data"] else ""
    return f"{e['created_at']} {e['pipeline_step']:12} {e['type']:7} {e['message']}{data}"


def new_pipeline_events(client, pipeline_id: int, after: int):
    """Yield the events of the pipeline's steps with id above `after`, page after page until none is left."""
    while True:
        page = client.pipeline_events(pipeline_id, after=after)
        if not page["items"]:
            return
        yield from page["items"]
        after = page["next_cursor"]


def watch_pipeline(client, pipeline_id: int, *, interval: float = 1.0, as_json: bool = False) -> dict:
    """Show each step's progress until the pipeline ends: a live bar per step (status, stage, steps or
    rows, loss) with the steps' log and status lines above, or one JSON event per line with `as_json`;
    return the ended pipeline."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    from nightshift.client import TERMINAL

    console = Console(highlight=False)
    columns = (TextColumn("{task.fields[step]}"), TextColumn("job {task.fields[job]} {task.fields[status]:9}"),
               TextColumn("{task.fields[stage]}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
               TextColumn("{task.fields[count]}"), TextColumn("loss {task.fields[loss]}"))
    after, rows, losses = 0, {}, {}
    with Progress(*columns, console=console, disable=as_json) as bar:
        while True:
            current = client.pipeline(pipeline_id)  # before the events: every event of an ended pipeline is then read
            for event in new_pipeline_events(client, pipeline_id, after):
                after = event["id"]
                if as_json:
                    print(json.dumps(event), flush=True)
                elif event["type"] == "metric":
                    losses[event["job_id"]] = event["data"].get("loss", losses.get(event["job_id"]))
                else:
                    bar.console.print(step_event_line(event), markup=False, soft_wrap=True)
            width = max(len(s["name"]) for s in current["steps"])
            for step in current["steps"]:
                job, p = step["job"], step["job"]["progress"]
                if step["name"] not in rows:
                    rows[step["name"]] = bar.add_task("", total=1.0, step=step["name"].ljust(width), job=job["id"],
                                                      status="", stage="", count="", loss="-")
                unit = "steps" if job["kind"] in ("finetune", "pretrain") else "rows"
                bar.update(rows[step["name"]], completed=_step_fraction(job), status=job["status"],
                           stage=p["stage"] or "", count=f"{p['done']}/{p['total']} {unit}" if p["total"] else "",
                           loss=number(losses.get(job["id"])))
            if current["status"] in TERMINAL:
                break
            time.sleep(interval)
    if not as_json:
        for line in _step_errors(current):
            console.print(line, markup=False, soft_wrap=True)
        console.print(f"pipeline {pipeline_id} {current['status']}", markup=False)
    return current

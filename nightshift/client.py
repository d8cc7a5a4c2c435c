"""The Python SDK: one method per endpoint of /api/v1, used by the CLI, the demo and the benchmarks.

    client = Client("http://127.0.0.1:8080", token)
    dataset = client.upload_dataset(Path("reviews.csv"), text_column="review", label_column="sentiment")
    job = client.submit("finetune", {"base_model": "all-MiniLM-L6-v2", "train_dataset_id": dataset["id"]})
    job = client.wait(job["id"])

Bodies are the API's JSON as dicts (the OpenAPI document at /api/v1/openapi.json describes each one).
A 4xx/5xx answer raises `ApiError`; an API that cannot be reached raises `ConnectionFailed`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import requests

TERMINAL = {"succeeded", "failed", "cancelled"}
DOWNLOAD_BLOCK_BYTES = 1 << 16
PAGE_SIZE = 200  # the most items the API returns in one page

Body = dict[str, Any]  # one JSON object of the API (a job, a dataset, a page of them, ...)


class NightshiftError(RuntimeError):
    """Root of the SDK's errors."""


class ApiError(NightshiftError):
    """The API answered with an error body: `status`, `code`, `message` and `details` carry it."""

    def __init__(self, status: int, body: Any) -> None:
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        self.status = status
        self.body = body
        self.code: str = error.get("code") or f"http_{status}"
        self.message: str = error.get("message") or str(body)[:500]
        self.details: Any = error.get("details") or {}
        super().__init__(f"HTTP {status} {self.code}: {self.message}")


class ConnectionFailed(NightshiftError):
    """The API could not be reached (refused, unknown host, timed out)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        super().__init__(f"cannot reach the Nightshift API at {url}: {reason}")


class Client:
    """Calls /api/v1 of one Nightshift server with a bearer token."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 300.0) -> None:
        self.url = base_url.rstrip("/")
        self.base = self.url + "/api/v1"
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    # -- plumbing ----------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs) -> Any:
        """Send a request and return the decoded JSON body, raising ApiError on 4xx/5xx."""
        response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            raise _api_error(response)
        return _json(response) if response.content else None

    def _send(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        try:
            return self.http.request(method, self.base + path, **kwargs)
        except requests.ConnectionError as exc:
            raise ConnectionFailed(self.url, _reason(exc)) from None
        except requests.Timeout:
            raise ConnectionFailed(self.url, f"no answer within {kwargs['timeout']:.0f}s") from None
        except requests.RequestException as exc:  # a malformed URL, a redirect loop, ...
            raise ConnectionFailed(self.url, str(exc)) from None

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[Body]:
        """Yield every item of a paged list, following `next_cursor` to the last page."""
        params = dict(params)
        while True:
            page = self.request("GET", path, params=_clean(params))
            yield from page["items"]
            if page.get("next_cursor") is None:
                return
            params["cursor"] = page["next_cursor"]

    # -- service -----------------------------------------------------------------------------------
    def health(self) -> Body:
        """Return the health of the database and Redis (`status` is "ok" or "degraded")."""
        response = self._send("GET", "/healthz")
        if response.status_code not in (200, 503):  # 503 carries the same body: what is down
            raise _api_error(response)
        return _json(response)

    def openapi(self) -> Body:
        """Return the OpenAPI 3 document of the API."""
        return self.request("GET", "/openapi.json")

    # -- datasets ----------------------------------------------------------------------------------
    def upload_dataset(self, path: Path, *, task: str | None = None, text_column: str = "text",
                       label_column: str | None = None, name: str | None = None, fmt: str | None = None,
                       target_file: Path | None = None, label_separator: str | None = None,
                       **role_columns: str) -> Body:
        """Upload a dataset file, streamed from disk; a task's other columns go by role, e.g.
        tokens_column="words"; `target_file` is translation's parallel file of targets;
        `label_separator` joins the labels of a row in multi-label data (default: JSON lists)."""
        path = Path(path)
        form = {"text_column": text_column, "label_column": label_column or "", "name": name or path.name,
                **role_columns}
        if task:
            form["task"] = task
        if fmt:
            form["format"] = fmt
        if label_separator:
            form["label_separator"] = label_separator
        files = {"file": Path(path)} | ({"target_file": Path(target_file)} if target_file else {})
        body = MultipartStream(form, files)
        try:
            return self.request("POST", "/datasets", data=body, headers={"Content-Type": body.content_type})
        finally:
            body.close()

    def list_datasets(self, *, cursor: int | None = None, limit: int | None = None) -> Body:
        """Return one page of datasets, newest first: {"items", "next_cursor"}."""
        return self.request("GET", "/datasets", params=_clean({"cursor": cursor, "limit": limit}))

    def iter_datasets(self, *, page_size: int = PAGE_SIZE) -> Iterator[Body]:
        """Yield every dataset, newest first, page after page."""
        return self._pages("/datasets", {"limit": page_size})

    def dataset(self, dataset_id: int) -> Body:
        """Return a dataset with its stats."""
        return self.request("GET", f"/datasets/{dataset_id}")

    def delete_dataset(self, dataset_id: int) -> None:
        """Delete a dataset (409 while an unfinished job reads it)."""
        self.request("DELETE", f"/datasets/{dataset_id}")

    # -- jobs --------------------------------------------------------------------------------------
    def submit(self, kind: str, params: dict, *, task: str | None = None, priority: int | None = None,
               max_attempts: int | None = None, idempotency_key: str | None = None, **fields) -> Body:
        """Submit a finetune, evaluate, batch_inference, pretrain or merge job; the same `idempotency_key` returns the same job."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {"kind": kind, "params": params,
                **_clean({"task": task, "priority": priority, "max_attempts": max_attempts}), **fields}
        return self.request("POST", "/jobs", json=body, headers=headers)

    def list_jobs(self, *, status: str | None = None, kind: str | None = None, task: str | None = None,
                  model: str | None = None, q: str | None = None, cursor: int | None = None,
                  limit: int | None = None) -> Body:
        """Return one page of jobs, newest first, filtered: {"items", "next_cursor"}."""
        return self.request("GET", "/jobs", params=_clean({"status": status, "kind": kind, "task": task,
                                                           "model": model, "q": q, "cursor": cursor, "limit": limit}))

    def iter_jobs(self, *, status: str | None = None, kind: str | None = None, task: str | None = None,
                  model: str | None = None, q: str | None = None, page_size: int = PAGE_SIZE) -> Iterator[Body]:
        """Yield every job that matches the filters, newest first, page after page."""
        return self._pages("/jobs", {"status": status, "kind": kind, "task": task, "model": model, "q": q,
                                     "limit": page_size})

    def job(self, job_id: int) -> Body:
        """Return a job with its progress."""
        return self.request("GET", f"/jobs/{job_id}")

    def cancel(self, job_id: int) -> Body:
        """Ask for a job to stop: a queued job ends at once, a running one at its next step."""
        return self.request("POST", f"/jobs/{job_id}/cancel")

    def retry(self, job_id: int, *, only_failed_rows: bool = False, params: dict[str, Any] | None = None) -> Body:
        """Submit an ended job again as a new job, with `params` changed; return the new job.

        With `only_failed_rows`, a succeeded batch_inference job's failed rows alone are predicted again
        (e.g. after a model or data fix, `params={"model": "fixed:2"}`) and merged into a copy of its
        predictions; the new job's result counts rows_retried, rows_fixed and rows_still_failing.
        """
        body = _clean({"only_failed_rows": only_failed_rows or None, "params": params or None})
        return self.request("POST", f"/jobs/{job_id}/retry", **({"json": body} if body else {}))

    def events(self, job_id: int, *, after: int = 0, type: str | None = None,  # noqa: A002 (the API's name)
               limit: int | None = None) -> Body:
        """Return a job's events with id above `after`: {"items", "next_cursor"} (pass it as `after`)."""
        return self.request("GET", f"/jobs/{job_id}/events",
                            params=_clean({"after": after, "type": type, "limit": limit}))

    def iter_events(self, job_id: int, *, after: int = 0, type: str | None = None,  # noqa: A002
                    follow: bool = False, poll: float = 1.0, timeout: float | None = None) -> Iterator[Body]:
        """Yield a job's events; with `follow`, keep polling until the job has ended and every event is read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ended = follow and self.job(job_id)["status"] in TERMINAL  # read before the events: none is missed
            page = self.events(job_id, after=after, type=type)
            yield from page["items"]
            after = page["next_cursor"]
            if page["items"]:
                continue
            if not follow or ended:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout:.0f}s")
            time.sleep(poll)

    def wait(self, job_id: int, *, timeout: float = 3600.0, poll: float = 1.0,
             on_event: Callable[[Body], None] | None = None) -> Body:
        """Poll a job until it ends and return it, passing each new event to `on_event`."""
        deadline, cursor = time.monotonic() + timeout, 0
        while True:
            if on_event is not None:
                page = self.events(job_id, after=cursor)
                for event in page["items"]:
                    on_event(event)
                cursor = page["next_cursor"]
            job = self.job(job_id)
            if job["status"] in TERMINAL:
                if on_event is not None:  # events written while the job ended
                    for event in self.iter_events(job_id, after=cursor):
                        on_event(event)
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f}s")
            time.sleep(poll)

    # -- pipelines ---------------------------------------------------------------------------------
    def submit_pipeline(self, steps: list[dict], *, name: str | None = None) -> Body:
        """Submit jobs as steps: each {"name", "kind", "params", ["task", "after", "priority"]}; a later step's
        `base_model` or `model` of "@name" is the model step `name` registers. Return the pipeline."""
        return self.request("POST", "/pipelines", json=_clean({"name": name, "steps": steps}))

    def pipeline(self, pipeline_id: int) -> Body:
        """Return a pipeline with its status, progress and steps (each with its job)."""
        return self.request("GET", f"/pipelines/{pipeline_id}")

    def list_pipelines(self, *, cursor: int | None = None, limit: int | None = None) -> Body:
        """Return one page of pipelines, newest first: {"items", "next_cursor"}."""
        return self.request("GET", "/pipelines", params=_clean({"cursor": cursor, "limit": limit}))

    def iter_pipelines(self, *, page_size: int = 100) -> Iterator[Body]:
        """Yield every pipeline, newest first, page after page."""
        return self._pages("/pipelines", {"limit": page_size})

    def cancel_pipeline(self, pipeline_id: int) -> Body:
        """Cancel every step of a pipeline that has not ended."""
        return self.request("POST", f"/pipelines/{pipeline_id}/cancel")

    def retry_pipeline(self, pipeline_id: int) -> Body:
        """Run the steps of an ended pipeline that did not succeed again, as new jobs; return the pipeline."""
        return self.request("POST", f"/pipelines/{pipeline_id}/retry")

    def pipeline_events(self, pipeline_id: int, *, after: int = 0, limit: int | None = None) -> Body:
        """Return the events of a pipeline's steps with id above `after` (each names its step and job)."""
        return self.request("GET", f"/pipelines/{pipeline_id}/events", params=_clean({"after": after, "limit": limit}))

    def wait_pipeline(self, pipeline_id: int, *, timeout: float = 3600.0, poll: float = 1.0) -> Body:
        """Poll a pipeline until every step has ended and return it."""
        deadline = time.monotonic() + timeout
        while True:
            pipeline = self.pipeline(pipeline_id)
            if pipeline["status"] in TERMINAL:
                return pipeline
            if time.monotonic() > deadline:
                raise TimeoutError(f"pipeline {pipeline_id} still {pipeline['status']} after {timeout:.0f}s")
            time.sleep(poll)

    def download_output(self, job_id: int, dest: Path, *, errors: bool = False) -> Path:
        """Stream a batch job's predictions (or, with `errors`, its failed rows) to `dest`; return `dest`."""
        dest = Path(dest)
        params = {"file": "errors"} if errors else {}
        with self._send("GET", f"/jobs/{job_id}/output", params=params, stream=True) as response:
            if response.status_code >= 400:
                raise _api_error(response)
            partial = dest.with_name(dest.name + ".part")
            try:
                with open(partial, "wb") as out:
                    for block in response.iter_content(DOWNLOAD_BLOCK_BYTES):
                        out.write(block)
            except requests.RequestException as exc:
                partial.unlink(missing_ok=True)
                raise ConnectionFailed(self.url, f"the download broke off: {_reason(exc)}") from None
            os.replace(partial, dest)  # no half-written file under the real name
        return dest

    # -- models and evaluations --------------------------------------------------------------------
    def workers(self) -> list[Body]:
        """Return the workers (host, queues, device, last heartbeat, alive), live ones first."""
        return self.request("GET", "/workers")["items"]

    def models(self) -> list[Body]:
        """Return every registered model version, newest first."""
        return self.request("GET", "/models")["items"]

    def model_versions(self, name: str) -> list[Body]:
        """Return the versions of registered model `name`, newest first."""
        return self.request("GET", f"/models/{requests.utils.quote(name, safe='')}")["items"]

    def list_evaluations(self, *, model: str | None = None, dataset_id: int | None = None,
                         cursor: int | None = None, limit: int | None = None) -> Body:
        """Return one page of evaluations, newest first; `model` is a name or name:version."""
        return self.request("GET", "/evaluations", params=_clean({"model": model, "dataset_id": dataset_id,
                                                                  "cursor": cursor, "limit": limit}))

    def iter_evaluations(self, *, model: str | None = None, dataset_id: int | None = None,
                         page_size: int = PAGE_SIZE) -> Iterator[Body]:
        """Yield every evaluation that matches, newest first, page after page."""
        return self._pages("/evaluations", {"model": model, "dataset_id": dataset_id, "limit": page_size})

    def evaluation(self, evaluation_id: int) -> Body:
        """Return an evaluation's metrics."""
        return self.request("GET", f"/evaluations/{evaluation_id}")


class MultipartStream:
    """A multipart/form-data body read from its files as it is sent, never held in memory whole.

    `requests` builds `files=` bodies in memory; this one has a length (so no chunked encoding) and
    yields the form fields, then each file in blocks.
    """

    def __init__(self, fields: dict[str, str], files: dict[str, Path]) -> None:
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self._parts: list[bytes | IO[bytes]] = []
        for name, value in fields.items():
            self._parts.append(_part_head(boundary, name) + str(value).encode() + b"\r\n")
        for name, path in files.items():
            self._parts.append(_part_head(boundary, name, path.name))
            self._parts.append(open(path, "rb"))  # noqa: SIM115 (closed by close())
            self._parts.append(b"\r\n")
        self._parts.append(f"--{boundary}--\r\n".encode())
        self._length = sum(len(p) if isinstance(p, bytes) else os.fstat(p.fileno()).st_size for p in self._parts)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        for part in self._parts:
            if isinstance(part, bytes):
                yield part
            else:
                while block := part.read(DOWNLOAD_BLOCK_BYTES):
                    yield block

    def read(self, size: int = -1) -> bytes:
        """Return up to `size` bytes of the body (all that is left when negative)."""
        if not hasattr(self, "_reader"):
            self._reader, self._buffer = iter(self), b""
        while size < 0 or len(self._buffer) < size:
            block = next(self._reader, None)
            if block is None:
                break
            self._buffer += block
        size = len(self._buffer) if size < 0 else size
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def close(self) -> None:
        """Close the files."""
        for part in self._parts:
            if not isinstance(part, bytes):
                part.close()


def _part_head(boundary: str, name: str, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{_quote(filename)}"' if filename else "")
    kind = "Content-Type: application/octet-stream\r\n" if filename else ""
    return f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode()


def _quote(filename: str) -> str:
    return filename.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")


def _api_error(response: requests.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"code": f"http_{response.status_code}",
                          "message": f"{response.url} answered {response.reason or 'an error'} without a JSON "
                                     "error body: is it a Nightshift API?"}}
    return ApiError(response.status_code, body)


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise NightshiftError(f"{response.url} answered HTTP {response.status_code} without JSON: is it a "
                              "Nightshift API?") from None


def _reason(exc: requests.ConnectionError) -> str:
    """Return the innermost cause of a connection error, e.g. "[Errno 111] Connection refused"."""
    cause: BaseException = exc
    while (inner := cause.__cause__ or cause.__context__) is not None:
        cause = inner
    return str(cause)


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}

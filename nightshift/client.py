"""A small HTTP client of the API, used by the CLI, the demo and the benchmarks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

TERMINAL = {"succeeded", "failed", "cancelled"}


class ApiError(RuntimeError):
    """The API answered with an error body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status} {error.get('code', '')}: {error.get('message', body)}")
        self.status = status
        self.body = body


class Client:
    """Calls /api/v1 with a bearer token."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 300.0) -> None:
        self.base = base_url.rstrip("/") + "/api/v1"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def request(self, method: str, path: str, **kwargs) -> Any:
        """Send a request and return the decoded JSON body, raising ApiError on 4xx/5xx."""
        response = self.http.request(method, self.base + path, timeout=self.timeout, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": {"message": response.text[:500]}}
            raise ApiError(response.status_code, body)
        return response.json() if response.content else None

    def upload_dataset(self, path: Path, *, task: str | None = None, text_column: str = "text",
                       label_column: str | None = None, name: str | None = None, fmt: str | None = None,
                       **role_columns: str) -> dict:
        """Upload a dataset file; a task's other columns go by role, e.g. tokens_column="words"."""
        form = {"text_column": text_column, "label_column": label_column or "", "name": name or path.name,
                **role_columns}
        if task:
            form["task"] = task
        if fmt:
            form["format"] = fmt
        with open(path, "rb") as handle:
            return self.request("POST", "/datasets", data=form, files={"file": (path.name, handle)})

    def submit(self, kind: str, params: dict, *, idempotency_key: str | None = None, **fields) -> dict:
        """Submit a job."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.request("POST", "/jobs", json={"kind": kind, "params": params, **fields}, headers=headers)

    def job(self, job_id: int) -> dict:
        return self.request("GET", f"/jobs/{job_id}")

    def cancel(self, job_id: int) -> dict:
        """Ask for a job to stop: a queued job ends at once, a running one at its next step."""
        return self.request("POST", f"/jobs/{job_id}/cancel")

    def retry(self, job_id: int) -> dict:
        """Submit an ended job again as a new job; return the new job."""
        return self.request("POST", f"/jobs/{job_id}/retry")

    def wait(self, job_id: int, *, timeout: float = 3600.0, poll: float = 1.0, on_event=None) -> dict:
        """Poll a job until it ends, passing each new event to `on_event`."""
        deadline, cursor = time.monotonic() + timeout, 0
        while True:
            if on_event is not None:
                page = self.request("GET", f"/jobs/{job_id}/events", params={"after": cursor})
                for event in page["items"]:
                    on_event(event)
                cursor = page["next_cursor"]
            job = self.job(job_id)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f}s")
            time.sleep(poll)

    def download_output(self, job_id: int, dest: Path, *, errors: bool = False) -> Path:
        """Stream a job's output file to `dest`."""
        params = {"file": "errors"} if errors else {}
        with self.http.get(f"{self.base}/jobs/{job_id}/output", params=params, stream=True,
                           timeout=self.timeout) as response:
            if response.status_code >= 400:
                raise ApiError(response.status_code, response.json())
            with open(dest, "wb") as out:
                for block in response.iter_content(1 << 16):
                    out.write(block)
        return dest

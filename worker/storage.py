"""Where datasets, checkpoints, models and outputs live: one interface over `fsspec`.

By default that is the local data directory, and a stored file's location is its absolute path, as it
always was: nothing is copied. With `NIGHTSHIFT_STORAGE_URL` (e.g. `s3://nightshift/prod`, any fsspec
URL) every host keeps its own local data directory as a working copy of the bucket, laid out the same way:
a job writes under its data dir, then `publish` uploads what it made to the same relative key in the
bucket and the database row keeps that URL; a process on any host `fetch`es a location into its own data
dir (downloading only what it lacks or what differs) and reads the local copy. Which host made a model,
a checkpoint or a dataset's file no longer matters.

Uploads of one directory put the files a reader checks for completeness last (`last=`): a checkpoint is
complete in the bucket only once its marker arrives, as it is on disk.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import IO

from worker.config import Settings
from worker.errors import TransientJobError


class StorageUnavailable(TransientJobError):
    """The bucket did not answer (or refused): a job retries after a backoff, the API answers 503."""

    code = "storage_unavailable"


def _reachable(method):
    """Say which storage failed and why when the bucket errs; a missing file stays FileNotFoundError."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (FileNotFoundError, StorageUnavailable, ValueError):
            raise
        except Exception as exc:
            if not self.remote:
                raise
            raise StorageUnavailable(f"storage {self.url} failed: {type(exc).__name__}: {exc}") from exc

    return wrapper


class Storage:
    """The durable store of a deployment: the local data dir (`url` empty) or a bucket."""

    def __init__(self, url: str, options: dict | None, data_dir: Path) -> None:
        self.url = url.rstrip("/")
        self.options = options or {}
        self.data_dir = Path(data_dir).resolve()
        self._fs = None
        self._root = ""
        self._pid: int | None = None  # the process that made `_fs` (a forked child makes its own)

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        return _storage(settings.storage_url, settings.storage_options, str(Path(settings.data_dir).resolve()))

    @property
    def remote(self) -> bool:
        return bool(self.url)

    def check(self) -> None:
        """Raise ValueError saying what to fix if a bucket is configured that this install cannot reach
        (its fsspec implementation is missing); touches no network."""
        if not self.remote:
            return
        import fsspec

        protocol = self.url.split("://", 1)[0]
        try:
            fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as exc:
            raise ValueError(f"NIGHTSHIFT_STORAGE_URL {self.url}: {exc} (for s3:// install the s3 extra: "
                             "pip install 'nightshift[s3]')") from None

    @property
    def fs(self):
        """The fsspec filesystem of the bucket (created on first use, once per process)."""
        if self._fs is None or self._pid != os.getpid():
            import fsspec

            self._fs, self._root = fsspec.core.url_to_fs(self.url, **self.options)
            self._root = self._root.rstrip("/")
            self._pid = os.getpid()
        return self._fs

    # -- locations --------------------------------------------------------------------------
    def location(self, local: Path) -> str:
        """The location of a file or directory under the data dir (where `publish` puts it)."""
        local = Path(local).resolve()
        if not self.remote:
            return str(local)
        return f"{self.url}/{local.relative_to(self.data_dir).as_posix()}"

    def local_path(self, location: str) -> Path:
        """Where this host keeps its copy of `location` (the path itself for a local location)."""
        if not _is_url(location):
            return Path(location)
        if self.remote and location.startswith(self.url + "/"):
            return self.data_dir / location[len(self.url) + 1:]
        # A location of another bucket (the deployment moved): cached under a name of its own.
        digest = hashlib.sha256(location.encode()).hexdigest()[:16]
        return self.data_dir / "cache" / digest / location.rstrip("/").rsplit("/", 1)[-1]

    @staticmethod
    def join(location: str, *names: str) -> str:
        """The location of `names` inside directory `location`."""
        if _is_url(location):
            return "/".join([location.rstrip("/"), *names])
        return str(Path(location, *names))

    @staticmethod
    def sibling(location: str, name: str) -> str:
        """The location of file `name` beside file `location`."""
        if _is_url(location):
            return f"{location.rsplit('/', 1)[0]}/{name}"
        return str(Path(location).with_name(name))

    # -- writing ------------------------------------------------------------------------------
    @_reachable
    def publish(self, local: Path, *, last: Iterable[str] = ()) -> str:
        """Make a file or directory under the data dir durable; return its location.

        Local storage: it already is. A bucket: upload it (a directory's files in `last` after the
        others), replacing what the location held.
        """
        location = self.location(local)
        if not self.remote:
            return location
        local = Path(local)
        target = self._path(location)
        if local.is_dir():
            files = sorted(p for p in local.rglob("*") if p.is_file())
            late = set(last)
            files.sort(key=lambda p: p.name in late)
            wanted = {p.relative_to(local).as_posix() for p in files}
            for stale in set(self._listing(target)) - wanted:
                self.fs.rm_file(f"{target}/{stale}")
            for path in files:
                self.fs.put_file(str(path), f"{target}/{path.relative_to(local).as_posix()}")
        else:
            self.fs.put_file(str(local), target)
        self.fs.invalidate_cache()
        return location

    @_reachable
    def delete(self, location: str) -> None:
        """Remove a file or directory from storage (and this host's copy); gone already is fine."""
        local = self.local_path(location)
        if local.is_dir():
            shutil.rmtree(local, ignore_errors=True)
        else:
            local.unlink(missing_ok=True)
        if _is_url(location):
            path = self._path(location)
            self.fs.invalidate_cache()
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
            self.fs.invalidate_cache()

    # -- reading ------------------------------------------------------------------------------
    @_reachable
    def exists(self, location: str) -> bool:
        if not _is_url(location):
            return Path(location).exists()
        self.fs.invalidate_cache()
        path = self._path(location)
        return self.fs.exists(path) or bool(self._listing(path))

    @_reachable
    def fetch(self, location: str, *, last: Iterable[str] = ()) -> Path:
        """Return a local path holding `location`'s current content, downloading what this host lacks.

        A directory is mirrored: files missing here or of another size are downloaded (each to a
        temporary name, then renamed; those named in `last` after the others), files the location no
        longer has are removed.
        """
        local = self.local_path(location)
        if not _is_url(location):
            return local
        path = self._path(location)
        self.fs.invalidate_cache()
        listing = self._listing(path)
        if not listing:  # a file
            size = self.fs.size(path)
            if not (local.is_file() and local.stat().st_size == size):
                self._download(path, local)
            return local
        late = set(last)
        for name, size in sorted(listing.items(), key=lambda item: item[0].rsplit("/", 1)[-1] in late):
            target = local / name
            if not (target.is_file() and target.stat().st_size == size):
                self._download(f"{path}/{name}", target)
        if local.is_dir():
            for extra in [p for p in local.rglob("*") if p.is_file()]:
                if extra.relative_to(local).as_posix() not in listing:
                    extra.unlink()
        return local

    @_reachable
    def open(self, location: str, mode: str = "rb") -> IO:
        """Open a stored file for reading, where it is (no local copy)."""
        if not _is_url(location):
            return open(location, mode)  # noqa: SIM115 (the caller closes it)
        return self.fs.open(self._path(location), mode)

    def read_json(self, location: str) -> dict:
        """Return a stored JSON file's object, or {} if there is none."""
        try:
            with self.open(location, "rb") as handle:
                return json.load(handle)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError):
            return {}

    @_reachable
    def list_dirs(self, location: str) -> list[str]:
        """The names of the directories directly inside `location` (none if it does not exist)."""
        if not _is_url(location):
            return sorted(p.name for p in Path(location).glob("*") if p.is_dir()) if Path(location).is_dir() else []
        names = {name.split("/", 1)[0] for name in self._listing(self._path(location)) if "/" in name}
        return sorted(names)

    # -- internals ------------------------------------------------------------------------------
    def _path(self, location: str) -> str:
        """The filesystem path (no protocol) of a location in this store's bucket."""
        if not location.startswith(self.url + "/") and location != self.url:
            raise ValueError(f"{location} is not in storage {self.url}")
        self.fs  # noqa: B018 (sets the root)
        rest = location[len(self.url):].lstrip("/")
        return f"{self._root}/{rest}" if rest else self._root

    def _listing(self, path: str) -> dict[str, int]:
        """Files under directory `path` by their relative name, with their sizes ({} for a file or nothing)."""
        try:
            found = self.fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
        prefix = path.rstrip("/") + "/"
        return {name[len(prefix):]: int(info.get("size") or 0) for name, info in found.items()
                if name.startswith(prefix) and info.get("type") != "directory"}

    def _download(self, path: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.{os.getpid()}.part")
        try:
            self.fs.get_file(path, str(partial))
            os.replace(partial, local)
        finally:
            partial.unlink(missing_ok=True)


def _is_url(location: str) -> bool:
    return "://" in location


@cache
def _storage(url: str, options: str, data_dir: str) -> Storage:  # ValueError: settings to fix
    try:
        parsed = json.loads(options) if options.strip() else {}
    except ValueError:
        raise ValueError(f"NIGHTSHIFT_STORAGE_OPTIONS is not JSON: {options!r}") from None
    return Storage(url, parsed, Path(data_dir))

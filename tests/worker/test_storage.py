"""The storage interface: the data dir by default, a bucket (moto's S3 server) shared by hosts that each
keep their own data dir; checkpoints stored and fetched across hosts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.ml.checkpoints import COMPLETE_MARKER, GEOMETRY_FILE, prepare_checkpoints, push_checkpoint
from worker.ml.hooks import NullHooks
from worker.storage import Storage


def _model(directory: Path, **files: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name.replace("__", "/")).parent.mkdir(parents=True, exist_ok=True)
        (directory / name.replace("__", "/")).write_bytes(content)
    return directory


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.fixture
def hosts(bucket, tmp_path) -> tuple[Storage, Storage]:
    """Two hosts' views of one bucket, each with its own data dir."""
    url, options = bucket
    return (Storage(url, json.loads(options), tmp_path / "host-a"), Storage(url, json.loads(options), tmp_path / "host-b"))


def test_the_default_storage_is_the_data_dir_and_copies_nothing(tmp_path):
    storage = Storage("", None, tmp_path)
    model = _model(tmp_path / "models" / "job-1", **{"config.json": b'{"model_type": "bert"}'})
    location = storage.publish(model)
    assert location == str(model.resolve()) and not storage.remote
    assert storage.fetch(location) == model.resolve()
    assert storage.exists(location) and storage.read_json(storage.join(location, "config.json")) == {"model_type": "bert"}
    assert storage.read_json(storage.join(location, "missing.json")) == {}
    assert storage.sibling(storage.join(location, "config.json"), "x.json") == str(model.resolve() / "x.json")
    assert storage.list_dirs(str(tmp_path / "models")) == ["job-1"]
    storage.delete(location)
    assert not model.exists() and not storage.exists(location)


def test_a_directory_published_on_one_host_is_fetched_on_another_and_mirrored(hosts):
    a, b = hosts
    model = _model(a.data_dir / "models" / "job-7", **{"config.json": b'{"a": 1}', "weights.bin": b"w" * 1000,
                                                       "tokenizer__vocab.txt": b"hello\n"})
    location = a.publish(model)
    assert location == f"{a.url}/models/job-7"
    assert b.exists(location) and b.read_json(b.join(location, "config.json")) == {"a": 1}
    fetched = b.fetch(location)
    assert fetched == b.data_dir / "models" / "job-7" and _files(fetched) == _files(model)

    (model / "weights.bin").write_bytes(b"v" * 2000)  # changed
    (model / "tokenizer" / "vocab.txt").unlink()  # gone
    a.publish(model)
    assert _files(b.fetch(location)) == _files(model)  # the stale file removed, the changed one fetched again
    assert b.list_dirs(f"{a.url}/models") == ["job-7"] and b.list_dirs(f"{a.url}/nothing") == []


def test_a_file_round_trips_and_deletes_everywhere(hosts):
    a, b = hosts
    data = a.data_dir / "datasets" / "abc.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text('{"text": "hi"}\n')
    location = a.publish(data)
    assert b.fetch(location).read_text() == '{"text": "hi"}\n'
    with b.open(location) as handle:
        assert handle.read() == b'{"text": "hi"}\n'
    assert b.exists(location) and not b.exists(location + ".missing")
    assert b.sibling(location, "errors.jsonl") == f"{a.url}/datasets/errors.jsonl"
    a.delete(location)
    assert not b.exists(location) and not data.exists()
    b.delete(location)  # gone already: fine
    assert not (b.data_dir / "datasets" / "abc.jsonl").exists()


def _checkpoint(directory: Path, step: int, *, complete: bool = True) -> Path:
    path = _model(directory / f"checkpoint-{step}", **{"model.safetensors": b"x" * (100 + step)})
    state = {"global_step": step, "best_model_checkpoint": str(directory / f"checkpoint-{step}")}
    (path / "trainer_state.json").write_text(json.dumps(state))
    if complete:
        (path / COMPLETE_MARKER).touch()
    return path


def test_a_checkpoint_stored_on_one_host_resumes_on_another(hosts):
    a, b = hosts
    hooks_a, hooks_b = NullHooks(), NullHooks()
    hooks_a.storage, hooks_b.storage = a, b
    geometry = {"batch_size": 8, "train_rows": 100}
    here = a.data_dir / "checkpoints" / "job-3"
    assert prepare_checkpoints(here, geometry, hooks_a) is None
    push_checkpoint(a, here, _checkpoint(here, 5))
    cut_short = _checkpoint(here, 9, complete=False)  # uploaded without its marker: never counts
    a.publish(cut_short)

    there = b.data_dir / "checkpoints" / "job-3"
    resume = prepare_checkpoints(there, geometry, hooks_b)
    assert resume == there / "checkpoint-5"
    assert _files(resume) == _files(here / "checkpoint-5") | {"trainer_state.json": (resume / "trainer_state.json").read_bytes()}
    state = json.loads((resume / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(there / "checkpoint-5")  # this host's path
    assert not (there / "checkpoint-9").exists() and (there / GEOMETRY_FILE).is_file()
    assert ("log", "fetched checkpoint-5 from storage") in hooks_b.events

    # The Trainer rotated checkpoint-5 away on this host after saving checkpoint-12: the bucket follows.
    import shutil

    shutil.rmtree(there / "checkpoint-5")
    push_checkpoint(b, there, _checkpoint(there, 12))
    assert b.list_dirs(b.location(there)) == ["checkpoint-12"]
    with pytest.raises(Exception, match="geometry changed"):
        prepare_checkpoints(a.data_dir / "checkpoints" / "job-3", {"batch_size": 16, "train_rows": 100}, hooks_a)


def test_a_bucket_that_does_not_answer_is_a_transient_error_that_names_it(tmp_path):
    from worker.errors import TransientJobError
    from worker.storage import StorageUnavailable

    from nightshift.stack import free_port

    options = {"endpoint_url": f"http://127.0.0.1:{free_port()}", "key": "k", "secret": "s",
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    storage = Storage("s3://nowhere/data", options, tmp_path)
    with pytest.raises(StorageUnavailable, match="storage s3://nowhere/data failed") as failed:
        storage.exists("s3://nowhere/data/datasets/a.jsonl")
    assert isinstance(failed.value, TransientJobError)  # a job retries after a backoff


def test_a_missing_stored_file_is_file_not_found(hosts):
    a, _b = hosts
    with pytest.raises(FileNotFoundError):
        a.fetch(f"{a.url}/models/job-404")
    assert a.read_json(f"{a.url}/models/job-404/config.json") == {}


def test_bad_storage_settings_stop_a_process_at_start_saying_what_to_fix(tmp_path):
    from worker.celery_app import make_celery
    from worker.config import Settings

    with pytest.raises(ValueError, match="NIGHTSHIFT_STORAGE_OPTIONS is not JSON"):
        make_celery(Settings.from_env(data_dir=str(tmp_path), storage_url="s3://b/p", storage_options="{endpoint"))
    with pytest.raises(ValueError, match="NIGHTSHIFT_STORAGE_URL nosuch://b/p: .*install"):
        make_celery(Settings.from_env(data_dir=str(tmp_path), storage_url="nosuch://b/p"))
    make_celery(Settings.from_env(data_dir=str(tmp_path), storage_url="s3://b/p"))  # s3fs is installed here

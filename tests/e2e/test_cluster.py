"""Workers on two hosts: each with its own data dir, sharing only PostgreSQL, Redis and a bucket.

The API, beat and two Celery workers run as separate processes with three separate data dirs; datasets,
checkpoints, models and outputs reach a worker only through the bucket (moto's S3 server). One worker
at a time is up where a test needs to know which host runs a job, so every job kind runs on a host that
did not make its inputs, and a fine-tune and a batch job each lose their host mid-run and finish on the
other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import Dataset, InferenceChunk, Job, JobEvent, ModelArtifact
from db.session import make_engine, make_session_factory
from nightshift.cli import ensure_local_token
from nightshift.client import Client
from nightshift.stack import Stack, free_port
from tests.conftest import create_postgres_database, drop_postgres_database, make_bucket
from tests.helpers import wait_until, write_reviews
from worker.config import Settings
from worker.storage import Storage

pytestmark = pytest.mark.slow

HOSTS = ("w1", "w2")


class Cluster(Stack):
    """API and beat on one data dir, workers w1 and w2 on one each; starts with w1 alone."""

    def __init__(self, root: Path, database_url: str, storage_url: str, storage_options: str) -> None:
        settings = Settings.from_env(
            data_dir=str(root / "api"), database_url=database_url, api_port=free_port(), api_workers=1,
            storage_url=storage_url, storage_options=storage_options,
            heartbeat_seconds=0.5, lease_seconds=4.0, sweep_seconds=1.0, relay_seconds=0.5,
            redispatch_after_seconds=3.0, visibility_timeout_seconds=6, unacked_restore_seconds=1,
        )
        super().__init__(settings, log_dir=root / "logs", workers=2,
                         overrides={name: {"data_dir": str(root / name)} for name in HOSTS})
        self.root = root
        self.names.remove("w2")  # started when a test needs a second host
        self.storage = Storage.from_settings(settings.with_overrides(data_dir=str(root / "tests")))
        self.session_factory = make_session_factory(make_engine(database_url))

    def host_dir(self, name: str) -> Path:
        return self.root / name

    def stop_host(self, name: str) -> None:
        """Warm shutdown of an idle worker."""
        self.processes[name].terminate()
        self.processes[name].wait(timeout=60)

    def owner_host(self, job_id: int) -> str | None:
        """The worker whose pool process holds the job's lease now (None if none does)."""
        import psutil

        with self.session_factory() as session:
            owner = session.get(Job, job_id).lease_owner
        if not owner:
            return None
        try:
            parent = psutil.Process(int(owner.rsplit(":", 1)[1])).parent().pid
        except psutil.NoSuchProcess:
            return None
        return next((name for name, proc in self.processes.items() if proc.pid == parent), None)

    def model_path(self, name: str) -> str:
        """Where the registry says model `name` (its newest version) is stored."""
        with self.session_factory() as session:
            return session.scalars(select(ModelArtifact.path).where(ModelArtifact.name == name)
                                   .order_by(ModelArtifact.version.desc())).first()

    def logs(self, job_id: int) -> list[str]:
        with self.session_factory() as session:
            return list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)
                                        .order_by(JobEvent.id)))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_endpoint):
    root = tmp_path_factory.mktemp("cluster")
    storage_url, storage_options = make_bucket(s3_endpoint)
    database_url = create_postgres_database()
    cluster = Cluster(root, database_url, storage_url, storage_options)
    try:
        settings = cluster.start(redis_url=None)
        cluster.client = Client(settings.base_url, ensure_local_token(settings), timeout=60)
        yield cluster
    finally:
        cluster.stop()
        cluster.session_factory.kw["bind"].dispose()
        drop_postgres_database(database_url)
        if os.environ.get("NIGHTSHIFT_TEST_SHOW_LOGS"):
            for log in sorted(cluster.log_dir.glob("*.log")):
                print(f"==== {log.name}\n{log.read_text()[-5000:]}")


@pytest.fixture(scope="module")
def datasets(cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster-data")
    client = cluster.client
    train = client.upload_dataset(write_reviews(folder / "train.csv", 200, seed=1), text_column="text",
                                  label_column="label")
    docs = client.upload_dataset(write_reviews(folder / "docs.csv", 6000, seed=2, labelled=False), text_column="text")
    return train, docs


def test_datasets_live_in_the_bucket_not_on_the_api_host(cluster, datasets):
    train, docs = datasets
    assert not list((cluster.host_dir("api") / "datasets").glob("*.jsonl"))
    with cluster.session_factory() as session:
        paths = [session.get(Dataset, d["id"]).path for d in (train, docs)]
    assert all(path.startswith(cluster.settings.storage_url + "/datasets/") for path in paths), paths
    assert all(cluster.storage.exists(path) for path in paths)


@pytest.fixture(scope="module")
def finetuned(cluster, datasets, tiny_model):
    """A fine-tune started on w1, whose host dies after its first stored checkpoint; w2 finishes it."""
    train, _docs = datasets
    job = cluster.client.submit("finetune", {
        "base_model": str(tiny_model), "train_dataset_id": train["id"], "max_steps": 240, "batch_size": 8,
        "learning_rate": 5e-3, "save_steps": 20, "max_length": 32, "model_name": "cluster-sentiment",
    })

    def checkpoint_in_the_bucket() -> bool:
        with cluster.session_factory() as session:
            status = session.get(Job, job["id"]).status
        assert status in ("queued", "running"), f"job {job['id']} {status} before its host could be killed"
        where = f"{cluster.settings.storage_url}/checkpoints/job-{job['id']}"
        return any(cluster.storage.exists(f"{where}/{name}/COMPLETE") for name in cluster.storage.list_dirs(where))

    wait_until(checkpoint_in_the_bucket, timeout=240, interval=0.05, message="the fine-tune stores a checkpoint")
    assert cluster.owner_host(job["id"]) == "w1"
    cluster.kill_tree("w1")  # its host died
    cluster.start_process("w2")
    return cluster.client.wait(job["id"], timeout=300)


def test_a_fine_tune_whose_host_dies_resumes_on_the_other_host_from_the_bucket(cluster, finetuned):
    assert finetuned["status"] == "succeeded", finetuned["error"]
    train = finetuned["result"]["train"]
    assert train["resumed_from_step"] >= 20 and train["global_step"] == 240
    logs = cluster.logs(finetuned["id"])
    assert any(line.startswith("fetched checkpoint-") and line.endswith(" from storage") for line in logs), logs
    # Made on w2, stored, registered by its bucket location; w1's data dir never held it.
    assert cluster.model_path("cluster-sentiment") == f"{cluster.settings.storage_url}/models/job-{finetuned['id']}"
    assert (cluster.host_dir("w2") / "models" / f"job-{finetuned['id']}" / "config.json").is_file()
    assert not (cluster.host_dir("w1") / "models" / f"job-{finetuned['id']}" / "config.json").exists()


@pytest.fixture(scope="module")
def batch(cluster, datasets, finetuned):
    """Batch inference started on w2, whose host dies after a few committed chunks; w1 finishes it."""
    _train, docs = datasets
    job = cluster.client.submit("batch_inference", {"model": "cluster-sentiment", "dataset_id": docs["id"],
                                                    "chunk_rows": 50})

    def chunks_committed() -> bool:
        with cluster.session_factory() as session:
            status = session.get(Job, job["id"]).status
            count = len(session.scalars(select(InferenceChunk.id).where(InferenceChunk.job_id == job["id"])).all())
        assert status in ("queued", "running"), f"job {job['id']} {status} before its host could be killed"
        return count >= 3

    wait_until(chunks_committed, timeout=240, interval=0.05, message="the batch job commits three chunks")
    cluster.kill_tree("w2")
    cluster.start_process("w1")
    return cluster.client.wait(job["id"], timeout=300)


def test_a_batch_job_whose_host_dies_finishes_on_the_other_with_every_row_once(cluster, datasets, finetuned, batch,
                                                                              tmp_path):
    assert batch["status"] == "succeeded", batch["error"]
    _train, docs = datasets
    with cluster.session_factory() as session:
        chunks = session.scalars(select(InferenceChunk).where(InferenceChunk.job_id == batch["id"])).all()
    assert len({c.epoch for c in chunks}) == 2  # chunks committed by both attempts, one on each host
    assert all(c.path.startswith(cluster.settings.storage_url + "/outputs/") for c in chunks)
    # The API host streams the output from the bucket: it has no copy of its own.
    out = cluster.client.download_output(batch["id"], tmp_path / "predictions.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(docs["row_count"]))
    assert [r["id"] for r in rows[:3]] == ["r0", "r1", "r2"] and {r["label"] for r in rows} <= {"pos", "neg"}
    assert not (cluster.host_dir("api") / "outputs").exists()
    # w1 fetched the model w2 had made, and the chunks w2 had committed.
    assert (cluster.host_dir("w1") / "models" / f"job-{finetuned['id']}" / "config.json").is_file()
    first = min(chunks, key=lambda c: c.chunk_index)
    assert (cluster.host_dir("w1") / "outputs" / f"job-{batch['id']}" / "chunks" / first.path.rsplit("/", 1)[1]).is_file()


@pytest.fixture(scope="module")
def made_on_w1(cluster, datasets, batch, tiny_model):
    """With w1 alone: an evaluation, a LoRA fine-tune and a masked-LM pretrain."""
    train, _docs = datasets
    client = cluster.client
    evaluation = client.submit("evaluate", {"model": "cluster-sentiment", "dataset_id": train["id"]})
    lora = client.submit("finetune", {"base_model": str(tiny_model), "train_dataset_id": train["id"], "max_steps": 30,
                                      "batch_size": 8, "learning_rate": 5e-3, "max_length": 32, "lora": {"r": 4},
                                      "model_name": "cluster-lora"})
    pretrain = client.submit("pretrain", {"base_model": str(tiny_model), "train_dataset_id": train["id"],
                                          "max_steps": 20, "batch_size": 8, "max_length": 32,
                                          "model_name": "cluster-lm"})
    return {name: client.wait(job["id"], timeout=300)
            for name, job in {"evaluate": evaluation, "lora": lora, "pretrain": pretrain}.items()}


@pytest.fixture(scope="module")
def made_on_w2(cluster, datasets, made_on_w1):
    """With w2 alone: a merge of w1's adapter, an evaluation of the merged model, a fine-tune from w1's pretrain."""
    train, _docs = datasets
    client = cluster.client
    cluster.start_process("w2")
    cluster.stop_host("w1")
    merge = client.wait(client.submit("merge", {"model": "cluster-lora:1", "model_name": "cluster-full"})["id"],
                        timeout=300)
    evaluation = client.wait(client.submit("evaluate", {"model": "cluster-full", "dataset_id": train["id"]})["id"],
                             timeout=300)
    tuned = client.wait(client.submit("finetune", {"base_model": "cluster-lm", "train_dataset_id": train["id"],
                                                   "max_steps": 20, "batch_size": 8, "max_length": 32,
                                                   "model_name": "cluster-from-lm"})["id"], timeout=300)
    return {"merge": merge, "evaluate": evaluation, "finetune": tuned}


def test_every_job_kind_runs_on_a_host_that_did_not_make_its_inputs(cluster, made_on_w1, made_on_w2):
    for name, job in {**{f"w1 {k}": v for k, v in made_on_w1.items()},
                      **{f"w2 {k}": v for k, v in made_on_w2.items()}}.items():
        assert job["status"] == "succeeded", (name, job["error"])
    assert made_on_w1["evaluate"]["result"]["metrics"]["accuracy"] > 0.8  # w2's model, fetched by w1
    # w2 fetched w1's adapter (not its weights' base: a local path both hosts have) and w1's pretrained model.
    lora_job, lm_job = made_on_w1["lora"]["id"], made_on_w1["pretrain"]["id"]
    assert (cluster.host_dir("w2") / "models" / f"job-{lora_job}" / "adapter_config.json").is_file()
    assert (cluster.host_dir("w2") / "models" / f"job-{lm_job}" / "config.json").is_file()
    assert made_on_w2["merge"]["result"]["merged_from"] == "cluster-lora:1"
    assert made_on_w2["evaluate"]["result"]["metrics"]["support"] == 200
    assert made_on_w2["finetune"]["result"]["train"]["global_step"] == 20
    for job in (made_on_w2["merge"], made_on_w2["finetune"]):
        assert cluster.model_path(job["result"]["model"].split(":")[0]) == (
            f"{cluster.settings.storage_url}/models/job-{job['id']}")


def test_deleting_a_dataset_removes_it_from_the_bucket(cluster, made_on_w2, tmp_path):
    data = cluster.client.upload_dataset(write_reviews(tmp_path / "spare.csv", 20, seed=3), text_column="text",
                                         label_column="label")
    with cluster.session_factory() as session:
        path = session.get(Dataset, data["id"]).path
    assert cluster.storage.exists(path)
    cluster.client.request("DELETE", f"/datasets/{data['id']}")
    assert not cluster.storage.exists(path)


def test_both_hosts_announce_themselves(cluster, made_on_w2):
    workers = {w["name"].split("@")[0]: w for w in cluster.client.workers()}
    assert {"w1", "w2"} <= set(workers)
    for worker in (workers["w1"], workers["w2"]):
        assert worker["host"] and sorted(worker["queues"]) == ["cpu", "gpu"] and worker["device"]["kind"] in ("cpu", "cuda")
    assert workers["w2"]["alive"] and not workers["w1"]["alive"]  # w1 was stopped for the last jobs

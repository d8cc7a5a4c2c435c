"""HTTP -> Redis -> a real Celery worker process -> database -> output files, on both backends."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from sqlalchemy import select

from db.models import Job, JobEvent
from nightshift.client import ApiError
from db.session import make_engine, make_session_factory
from tests.helpers import wait_until, write_reviews
from worker.celery_app import make_celery

pytestmark = pytest.mark.slow

EMPTY_ROWS = frozenset(i for i in range(700) if i % 97 == 5)


@pytest.fixture(scope="module")
def trained(system, tiny_model, tmp_path_factory):
    """Upload data and fine-tune the tiny model once per backend."""
    client, _settings, _stack = system
    folder = tmp_path_factory.mktemp("data")
    train = client.upload_dataset(write_reviews(folder / "train.csv", 160, seed=1), text_column="text",
                                  label_column="label")
    job = client.submit("finetune", {
        "base_model": str(tiny_model), "train_dataset_id": train["id"], "max_steps": 30, "batch_size": 8,
        "learning_rate": 5e-3, "logging_steps": 5, "save_steps": 10, "model_name": "tiny-sentiment",
        "max_length": 32,
    })
    return client, client.wait(job["id"], timeout=240), train


def test_finetune_registers_a_model_with_its_evaluation(trained):
    client, job, _train = trained
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1 and job["progress"]["fraction"] == 1.0
    assert job["result"]["model"] == "tiny-sentiment:1"
    models = client.request("GET", "/models/tiny-sentiment")["items"]
    assert [(m["version"], sorted(m["label_names"])) for m in models] == [(1, ["neg", "pos"])]
    evaluation = client.request("GET", f"/evaluations/{job['result']['evaluation_id']}")
    metrics = evaluation["metrics"]
    assert set(metrics) >= {"accuracy", "f1_macro", "precision_weighted", "per_class", "confusion_matrix"}
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == metrics["support"] == 16
    events = client.request("GET", f"/jobs/{job['id']}/events", params={"type": "metric"})["items"]
    assert any("loss" in e["data"] for e in events) and any("learning_rate" in e["data"] for e in events)
    logs = [e["message"] for e in client.request("GET", f"/jobs/{job['id']}/events", params={"type": "log"})["items"]]
    # auto measures on this CPU: fp32 unless a bf16 training step runs clearly faster
    chosen = [m.split(": ")[2].split(" ")[0] for m in logs if m.startswith("training precision: auto on CPU: ")]
    assert chosen and chosen[0] in ("fp32", "bf16"), logs


def test_metrics_over_http_count_the_finished_fine_tune_and_the_live_worker(trained, system):
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    _client, settings, _stack = system
    response = requests.get(f"{settings.base_url}/metrics", timeout=30)  # through gunicorn, as Prometheus scrapes
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain; version=")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(response.text) for s in family.samples}
    finished = (("kind", "finetune"), ("status", "succeeded"))
    assert samples[("nightshift_job_run_seconds_count", finished)] >= 1
    assert samples[("nightshift_job_throughput_count", (("kind", "finetune"), ("unit", "samples")))] >= 1
    workers = {labels: up for (name, labels), up in samples.items() if name == "nightshift_worker_up"}
    assert workers and all(up == 1 for up in workers.values()), workers
    assert samples[("nightshift_broker_up", ())] == 1


def test_evaluate_job_scores_a_registered_model(trained, tmp_path):
    client, _job, _train = trained
    data = client.upload_dataset(write_reviews(tmp_path / "eval.csv", 60, seed=7), text_column="text",
                                 label_column="label")
    job = client.wait(client.submit("evaluate", {"model": "tiny-sentiment", "dataset_id": data["id"]})["id"],
                      timeout=120)
    assert job["status"] == "succeeded", job["error"]
    evaluation = client.request("GET", f"/evaluations/{job['result']['evaluation_id']}")
    assert evaluation["dataset_id"] == data["id"] and evaluation["metrics"]["support"] == 60


def test_batch_inference_writes_one_line_per_row_in_input_order(trained, tmp_path):
    client, _job, _train = trained
    docs = client.upload_dataset(write_reviews(tmp_path / "docs.csv", 700, seed=3, labelled=False, blank_rows=EMPTY_ROWS),
                                 text_column="text")
    job = client.submit("batch_inference", {"model": "tiny-sentiment", "dataset_id": docs["id"], "chunk_rows": 128})
    job = client.wait(job["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["done"] == job["progress"]["total"] == 700
    predictions = [json.loads(line) for line in client.download_output(job["id"], tmp_path / "p.jsonl").open()]
    errors = [json.loads(line) for line in client.download_output(job["id"], tmp_path / "e.jsonl", errors=True).open()]
    empty_rows = sorted(EMPTY_ROWS)
    assert [e["row"] for e in errors] == empty_rows
    assert [p["row"] for p in predictions] == [i for i in range(700) if i not in empty_rows]
    first = predictions[0]
    assert first["id"] == "r0" and first["label"] in ("neg", "pos")
    assert abs(sum(first["probabilities"].values()) - 1) < 1e-4 and first["score"] == max(first["probabilities"].values())
    # The precision "auto" chose, and why, is in the result and the job's events.
    reason = job["result"]["precision_reason"]
    assert reason.startswith(f"auto on CPU: {job['result']['precision']}")
    logs = client.request("GET", f"/jobs/{job['id']}/events", params={"type": "log"})["items"]
    assert f"precision: {reason}" in [e["message"] for e in logs]
    assert 10 < job["result"]["peak_rss_mb"] < 64 * 1024  # the job process's own peak, in MiB
    seconds = job["result"]["seconds"]  # where the attempt's time went
    # (and "tuning": speed probes, when this is the machine's first job of the model)
    assert {"loading model", "predicting", "writing"} <= set(seconds) <= {"loading model", "predicting", "writing",
                                                                          "tuning"} and seconds["predicting"] > 0


def test_duplicate_delivery_of_one_message_runs_the_job_once(trained, system, tmp_path):
    client, settings, _stack = system
    data = client.upload_dataset(write_reviews(tmp_path / "dup.csv", 40, seed=9), text_column="text",
                                 label_column="label")
    job = client.submit("evaluate", {"model": "tiny-sentiment", "dataset_id": data["id"]})
    celery = make_celery(settings)
    for _ in range(2):  # the same wake-up call delivered twice more
        celery.send_task("jobs.evaluate", args=[job["id"]], queue=job["queue"])
    job = client.wait(job["id"], timeout=120)
    assert job["status"] == "succeeded" and job["attempts"] == 1
    factory = make_session_factory(make_engine(settings.database_url))
    wait_until(lambda: _queue_empty(celery, job["queue"]), timeout=60, message="the duplicates are consumed")
    with factory() as session:
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job["id"], JobEvent.type == "status"))
        starts = [e for e in events if e.data.get("status") == "running"]
        assert len(starts) == 1 and session.get(Job, job["id"]).epoch == 1


def _queue_empty(celery, queue: str) -> bool:
    with celery.connection_for_write() as conn:
        return conn.default_channel.client.llen(queue) == 0 and not conn.default_channel.client.hlen("unacked")


def test_cancel_stops_a_running_job_and_a_queued_one_never_starts(trained, system, tiny_model):
    client, _job, train = trained
    celery = make_celery(system[1])
    running = client.submit("finetune", {
        "base_model": str(tiny_model), "train_dataset_id": train["id"], "max_steps": 100_000, "batch_size": 4,
        "logging_steps": 50, "save_steps": 100_000, "max_length": 32,
    })
    queued = client.submit("evaluate", {"model": "tiny-sentiment", "dataset_id": train["id"]})
    wait_until(lambda: (client.job(running["id"])["progress"]["done"] or 0) > 0, timeout=120,
               message="the long fine-tune is training")
    assert client.request("POST", f"/jobs/{queued['id']}/cancel")["status"] == "cancelled"
    client.request("POST", f"/jobs/{running['id']}/cancel")
    stopped = client.wait(running["id"], timeout=60, poll=0.2)
    assert stopped["status"] == "cancelled" and stopped["progress"]["done"] < 100_000
    wait_until(lambda: _queue_empty(celery, queued["queue"]), timeout=60, message="the queued message is consumed")
    never = client.job(queued["id"])
    assert never["status"] == "cancelled" and never["attempts"] == 0 and never["started_at"] is None


def test_batch_inference_in_int8_labels_rows_like_fp32(trained, tmp_path):
    client, _job, _train = trained
    docs = client.upload_dataset(write_reviews(tmp_path / "docs.csv", 300, seed=4, labelled=False), text_column="text")
    labels = {}
    for precision in ("fp32", "int8"):
        job = client.wait(client.submit("batch_inference", {"model": "tiny-sentiment", "dataset_id": docs["id"],
                                                            "precision": precision})["id"], timeout=180)
        assert job["status"] == "succeeded", job["error"]
        assert job["result"]["precision"] == precision
        output = client.download_output(job["id"], tmp_path / f"{precision}.jsonl")
        labels[precision] = [json.loads(line)["label"] for line in output.open()]
    assert len(labels["int8"]) == len(labels["fp32"]) == 300
    agreement = sum(a == b for a, b in zip(labels["int8"], labels["fp32"])) / 300
    assert agreement >= 0.9, agreement  # quantized, not broken


def test_int8_is_refused_for_training(trained):
    client, _job, train = trained
    with pytest.raises(ApiError) as refused:
        client.submit("finetune", {"base_model": "tiny-sentiment", "train_dataset_id": train["id"], "precision": "int8"})
    assert refused.value.status == 422 and "precision" in str(refused.value.body)


def test_queued_jobs_start_highest_priority_first_then_oldest(trained, system, tiny_model):
    """Fill the queue behind a busy worker, then free it: the jobs start in priority order, whatever
    order their messages come in."""
    client, _job, train = trained
    blocker = client.submit("finetune", {
        "base_model": str(tiny_model), "train_dataset_id": train["id"], "max_steps": 100_000, "batch_size": 4,
        "logging_steps": 50, "save_steps": 100_000, "max_length": 32,
    })
    wait_until(lambda: client.job(blocker["id"])["status"] == "running", timeout=120,
               message="the blocker holds the only worker")
    priorities = [1, 9, 5, 1, 9]
    jobs = [client.submit("evaluate", {"model": "tiny-sentiment", "dataset_id": train["id"]}, priority=p)
            for p in priorities]
    client.cancel(blocker["id"])
    ended = [client.wait(job["id"], timeout=300) for job in jobs]
    assert all(job["status"] == "succeeded" for job in ended), [job["error"] for job in ended]

    started = [job["id"] for job in sorted(ended, key=lambda job: datetime.fromisoformat(job["started_at"]))]
    expected = [job["id"] for job in sorted(jobs, key=lambda job: (-job["priority"], job["id"]))]
    assert started == expected, (started, expected)

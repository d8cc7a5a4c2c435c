"""Scenarios 5-7, 10, 12, 14: Redis restarted and wiped, the API killed, the database cut, cancels, floods."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from tests.chaos.conftest import check_invariants, finetune_params, wait_until

pytestmark = pytest.mark.chaos


def submit_evaluations(chaos, model: str, dataset: dict, count: int) -> list[int]:
    return [chaos.client.submit("evaluate", {"model": model, "dataset_id": dataset["id"]})["id"] for _ in range(count)]


def finish_all(chaos, job_ids: list[int], timeout: float = 240) -> list[dict]:
    return [chaos.client.wait(job_id, timeout=timeout) for job_id in job_ids]


def test_5a_redis_restart_loses_nothing(chaos, tiny_model, train_dataset, trained_model):
    running = chaos.client.submit("finetune", finetune_params(tiny_model, train_dataset, max_steps=300))
    queued = submit_evaluations(chaos, trained_model, train_dataset, 4)
    wait_until(lambda: chaos.job(running["id"]).status == "running", timeout=60, message="the fine-tune runs")
    chaos.redis.stop()  # AOF on: queued messages are on disk
    time.sleep(1)  # Redis stays down across a few heartbeats and relay passes
    chaos.redis.start()
    jobs = finish_all(chaos, [running["id"], *queued])
    assert [j["status"] for j in jobs] == ["succeeded"] * 5
    check_invariants(chaos, [j["id"] for j in jobs])


def test_5b_redis_wiped_every_job_is_redispatched_and_finishes_once(chaos, tiny_model, train_dataset,
                                                                    trained_model):
    running = chaos.client.submit("finetune", finetune_params(tiny_model, train_dataset, max_steps=200))
    wait_until(lambda: chaos.job(running["id"]).status == "running", timeout=60, message="the fine-tune runs")
    queued = submit_evaluations(chaos, trained_model, train_dataset, 4)
    redis.Redis.from_url(chaos.settings.redis_url).flushall()
    jobs = finish_all(chaos, [running["id"], *queued])
    assert [j["status"] for j in jobs] == ["succeeded"] * 5
    redispatched = [e for j in queued for e in chaos.events(j) if e.data.get("action") == "redispatch"]
    assert redispatched, "the sweeper re-sent no message, yet the queued jobs' messages were wiped"
    check_invariants(chaos, [j["id"] for j in jobs])


def test_6_api_killed_after_commit_before_publish_the_relay_publishes(chaos, trained_model, train_dataset):
    chaos.redis.stop()  # the API commits the job but cannot publish its message
    job = chaos.client.submit("evaluate", {"model": trained_model, "dataset_id": train_dataset["id"]})
    assert job["status"] == "queued"
    chaos.kill_tree("api")
    chaos.redis.start()
    chaos.start_process("api")
    chaos.wait_for_api()
    done = chaos.client.wait(job["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    check_invariants(chaos, [job["id"]])


def test_7_database_unreachable_longer_than_the_lease_one_run_continues(chaos, tiny_model, train_dataset):
    job = chaos.client.submit("finetune", finetune_params(tiny_model, train_dataset, max_steps=400, save_steps=50))
    wait_until(lambda: (chaos.job(job["id"]).progress_done or 0) >= 60, timeout=120, message="the job trains")
    chaos.proxy.cut()
    time.sleep(chaos.settings.lease_seconds * 2)  # the outage outlasts the lease
    chaos.proxy.start()
    done = chaos.client.wait(job["id"], timeout=240)
    assert done["status"] == "succeeded", done["error"]
    check_invariants(chaos, [job["id"]])


def test_10_cancel_queued_and_running_leaves_other_jobs_alone(chaos, tiny_model, train_dataset, trained_model):
    long_a = chaos.client.submit("finetune", finetune_params(tiny_model, train_dataset, max_steps=100_000))
    long_b = chaos.client.submit("finetune", finetune_params(tiny_model, train_dataset, max_steps=100_000))
    queued = chaos.client.submit("evaluate", {"model": trained_model, "dataset_id": train_dataset["id"]})
    bystander = chaos.client.submit("evaluate", {"model": trained_model, "dataset_id": train_dataset["id"]})
    wait_until(lambda: all(chaos.job(j["id"]).status == "running" for j in (long_a, long_b)), timeout=90,
               message="both workers are busy")
    assert chaos.client.request("POST", f"/jobs/{queued['id']}/cancel")["status"] == "cancelled"
    for job in (long_a, long_b):
        chaos.client.request("POST", f"/jobs/{job['id']}/cancel")
    stopped = [chaos.client.wait(j["id"], timeout=30, poll=0.2) for j in (long_a, long_b)]
    assert [j["status"] for j in stopped] == ["cancelled", "cancelled"]
    assert chaos.client.wait(bystander["id"], timeout=120)["status"] == "succeeded"
    never = chaos.client.job(queued["id"])
    assert never["status"] == "cancelled" and never["attempts"] == 0 and never["started_at"] is None
    check_invariants(chaos, [long_a["id"], long_b["id"], queued["id"], bystander["id"]])


def test_12_concurrent_duplicate_submissions_make_one_job(chaos, trained_model, train_dataset):
    body = {"kind": "evaluate", "params": {"model": trained_model, "dataset_id": train_dataset["id"]}}
    headers = {"Idempotency-Key": "nightly-eval-2026-11-28"}

    def submit(_):
        return chaos.client.request("POST", "/jobs", json=body, headers=headers)["id"]

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(submit, range(16)))
    assert len(ids) == 1
    done = chaos.client.wait(ids.pop(), timeout=120)
    assert done["status"] == "succeeded" and done["attempts"] == 1
    check_invariants(chaos, [done["id"]])


def test_14_bad_inputs_through_the_real_server_write_nothing(chaos, tmp_path):
    (chaos.data_dir / "datasets").mkdir(exist_ok=True)
    before = chaos.client.request("GET", "/datasets")["items"]
    files_before = sorted(p.name for p in (chaos.data_dir / "datasets").iterdir())
    base, token = chaos.client.base, chaos.client.http.headers["Authorization"]
    cases = [
        ("../../evil.csv", b"text,label\n\"unclosed,pos\n", 422),
        ("junk.csv", bytes(range(256)) * 64, 422),
        ("empty.csv", b"", 422),
        ("huge.jsonl", b'{"text": "x"}\n' * (chaos.settings.max_upload_bytes // 14 + 10), 413),
    ]
    for name, content, status in cases:
        try:
            response = requests.post(f"{base}/datasets", headers={"Authorization": token},
                                     files={"file": (name, content)}, data={"label_column": "label"}, timeout=120)
        except requests.ConnectionError:  # a server may close the socket on an oversized body
            assert status == 413
            continue
        assert response.status_code == status, (name, response.text[:300])
        assert "error" in response.json()
    assert chaos.client.request("GET", "/datasets")["items"] == before
    assert sorted(p.name for p in (chaos.data_dir / "datasets").iterdir()) == files_before
    assert not list(tmp_path.parent.glob("evil.csv"))

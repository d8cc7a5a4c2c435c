"""The `nightshift` command in this process against the real API over HTTP."""

from __future__ import annotations

import json

import pytest

from nightshift.cli import main
from nightshift.stack import free_port
from nightshift.views import watch
from tests.nightshift.conftest import LABELLED_CSV


def one_line_error(result, text: str) -> None:
    """Assert exit code 1 and a single `error: ...` line on stderr naming `text`, no traceback."""
    assert result.code == 1, result
    assert result.err.count("\n") == 1 and result.err.startswith("error: "), result.err
    assert text in result.err and "Traceback" not in result.err + result.out


def test_datasets_upload_list_show_delete(run, tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text(LABELLED_CSV)
    uploaded = run("datasets", "upload", path, "--text-column", "review", "--label-column", "sentiment",
                   "--name", "reviews", "--json")
    assert uploaded.code == 0 and uploaded.json()["row_count"] == 3
    dataset_id = uploaded.json()["id"]
    alias = run("upload", path, "--text-column", "review")  # the first command: plain text, human output
    assert alias.code == 0 and "rows     3" in alias.out and "plain text" in alias.out
    listed = run("datasets", "list", "--json")
    assert [d["id"] for d in listed.json()] == [dataset_id + 1, dataset_id]
    table = run("datasets", "list").out.splitlines()
    assert table[0].split() == ["ID", "NAME", "TASK", "ROWS", "COLUMNS", "CREATED"]
    assert table[2].split()[:4] == [str(dataset_id), "reviews", "text-classification", "3"]
    shown = run("datasets", "show", dataset_id)
    assert '{"pos": 2, "neg": 1}' in shown.out and "review, sentiment" in shown.out
    assert run("datasets", "delete", dataset_id).out == f"deleted dataset {dataset_id}\n"
    one_line_error(run("datasets", "show", dataset_id), f"error: dataset_not_found: dataset {dataset_id} not found")
    assert [d["id"] for d in run("datasets", "list", "--all", "--json").json()] == [dataset_id + 1]


def test_a_group_without_an_action_prints_its_help(run):
    result = run("datasets")
    assert result.code == 2 and "upload" in result.out and "delete" in result.out


def test_jobs_submit_from_flags(run, labelled, database):
    database.model("sentiment")
    result = run("jobs", "submit", "evaluate", "model=sentiment", f"dataset_id={labelled['id']}",
                 "--priority", "7", "--task", "text-classification", "--json")
    job = result.json()
    assert (job["kind"], job["task"], job["priority"], job["status"]) == ("evaluate", "text-classification", 7,
                                                                          "queued")
    assert job["params"]["dataset_id"] == labelled["id"]  # parsed as JSON: an integer
    human = run("submit", "batch_inference", "model=sentiment", f"dataset_id={labelled['id']}")
    assert human.code == 0 and "batch_inference" in human.out and "status    queued" in human.out
    flags_first = run("submit", "evaluate", "--task", "text-classification", "model=sentiment", "--priority", "3",
                      f"dataset_id={labelled['id']}", "--json")  # key=value pairs before, between and after flags
    assert flags_first.code == 0, flags_first.err
    assert (flags_first.json()["params"]["model"], flags_first.json()["priority"]) == ("sentiment", 3)
    tonight = run("submit", "evaluate", "model=sentiment", f"dataset_id={labelled['id']}", "--not-before",
                  "2099-01-01T22:00:00Z", "--json").json()
    assert (tonight["status"], tonight["not_before"]) == ("scheduled", "2099-01-01T22:00:00Z")
    keeps_to_it = run("submit", "batch_inference", "model=sentiment", f"dataset_id={labelled['id']}", "--not-before",
                      "nightly", "--pause-outside-window", "--json").json()
    assert keeps_to_it["run_window"] == "nightly"


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_jobs_submit_from_a_job_file_with_overrides(run, labelled, database, tmp_path, suffix):
    database.model("sentiment")
    spec = {"kind": "batch_inference", "task": "text-classification", "priority": 2,
            "params": {"model": "sentiment", "dataset_id": labelled["id"], "text_column": "wrong"}}
    path = tmp_path / f"job.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(spec))
    else:
        path.write_text("kind: batch_inference\ntask: text-classification\npriority: 2\nparams:\n"
                        f"  model: sentiment\n  dataset_id: {labelled['id']}\n  text_column: wrong\n")
    job = run("jobs", "submit", "-f", path, "text_column=review", "--priority", "9", "--json").json()
    assert job["kind"] == "batch_inference" and job["priority"] == 9
    assert job["params"]["text_column"] == "review" and job["params"]["model"] == "sentiment"


@pytest.mark.parametrize("argv", [("submit", "evaluate", "model=x", "--bogus"),
                                  ("submit", "evaluate", "--task", "x", "stray"),
                                  ("jobs", "list", "--status", "queued", "model=x")])
def test_an_unknown_flag_or_a_stray_word_is_refused_by_the_parser(capsys, argv):
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2 and f"unrecognized arguments: {argv[-1]}" in capsys.readouterr().err


def test_a_bad_job_file_is_one_line(run, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("kind: evaluate\nparameters: {}\n")
    one_line_error(run("jobs", "submit", "-f", path), "unknown keys ['parameters']")
    one_line_error(run("jobs", "submit", "model=x"), "name the job's kind")


def test_api_errors_are_one_line_with_exit_code_1(run, labelled, database):
    database.model("m")
    one_line_error(run("jobs", "show", 999), "error: job_not_found: job 999 not found")
    one_line_error(run("status", 999), "error: job_not_found: job 999 not found")
    invalid = run("submit", "evaluate", "model=m", f"dataset_id={labelled['id']}", "--priority", "12")
    one_line_error(invalid, "error: invalid_input: invalid request: priority: ")
    missing = run("submit", "evaluate", "model=m", "dataset_id=777")
    one_line_error(missing, "error: dataset_not_found: params.dataset_id: dataset 777 not found")
    unknown = run("submit", "evaluate", "model=ghost", f"dataset_id={labelled['id']}")
    one_line_error(unknown, "error: unknown_model: params.model: model 'ghost' is not a registered model")


def test_connection_refused_is_one_line(run):
    port = free_port()
    one_line_error(run("jobs", "list", "--url", f"http://127.0.0.1:{port}"),
                   f"error: cannot reach the Nightshift API at http://127.0.0.1:{port}: ")
    assert "Connection refused" in run("--url", f"http://127.0.0.1:{port}", "jobs").err
    one_line_error(run("jobs", "list", "--url", "nowhere"), "error: cannot reach the Nightshift API at nowhere: ")
    one_line_error(run("jobs", "list", "--url", run.server + "/elsewhere"), "error: http_404: ")
    assert "without a JSON error body: is it a Nightshift API?" in run("jobs", "--url", run.server + "/x").err


def test_jobs_list_with_filters(run, labelled, database):
    database.model("sentiment")
    database.model("other")
    evaluate = run("submit", "evaluate", "model=sentiment", f"dataset_id={labelled['id']}", "--json").json()
    batch = run("submit", "batch_inference", "model=other", f"dataset_id={labelled['id']}", "--json").json()
    run("cancel", batch["id"])

    def ids(*flags) -> list[int]:
        return [j["id"] for j in run("jobs", "list", *flags, "--json").json()]

    assert ids() == [batch["id"], evaluate["id"]]
    assert ids("--kind", "evaluate") == [evaluate["id"]]
    assert ids("--status", "cancelled") == [batch["id"]]
    assert ids("--model", "other") == [batch["id"]]
    assert ids("--q", "sentiment") == [evaluate["id"]]
    assert ids("--task", "translation") == []
    assert ids("--limit", "1") == [batch["id"]]
    assert ids("--all") == [batch["id"], evaluate["id"]]
    alias = run("jobs", "--status", "queued")  # the first command: `nightshift jobs` lists
    assert alias.code == 0 and alias.out.splitlines()[1].split()[:4] == [str(evaluate["id"]), "evaluate",
                                                                         "text-classification", "queued"]
    assert len(alias.out.splitlines()) == 2


def test_jobs_show_cancel_retry_and_events(run, labelled, database):
    database.model("sentiment")
    job = run("submit", "evaluate", "model=sentiment", f"dataset_id={labelled['id']}", "--json").json()
    assert run("jobs", "show", job["id"], "--json").json()["id"] == job["id"]
    assert "status    queued" in run("status", job["id"]).out
    assert run("jobs", "cancel", job["id"], "--json").json()["status"] == "cancelled"
    retried = run("jobs", "retry", job["id"])
    assert retried.code == 0 and retried.out.startswith(f"job {job['id'] + 1} retries job {job['id']}\n")
    conflict = run("retry", job["id"] + 1)
    one_line_error(conflict, "error: job_not_ended: job")
    database.event(job["id"], "metric", step=3, data={"loss": 0.25})
    events = run("jobs", "events", job["id"])
    lines = events.out.splitlines()
    assert any(line.split()[1] == "status" and "cancel" in line for line in lines), lines
    assert lines[-1].split(" ", 1)[1] == 'metric   {"loss": 0.25}'
    metrics = run("jobs", "events", job["id"], "--type", "metric", "--json")
    assert [json.loads(line)["data"] for line in metrics.out.splitlines()] == [{"loss": 0.25}]
    followed = run("jobs", "events", job["id"], "--follow", "--interval", "0.05", "--json")  # ended: returns
    assert json.loads(followed.out.splitlines()[-1])["data"] == {"loss": 0.25}


def test_jobs_output_and_its_errors_file(run, labelled, database, tmp_path):
    database.model("sentiment")
    job = run("submit", "batch_inference", "model=sentiment", f"dataset_id={labelled['id']}", "--json").json()
    one_line_error(run("jobs", "output", job["id"], "-o", tmp_path / "x.jsonl"), "error: not_ready: job")
    (tmp_path / "predictions.jsonl").write_text('{"row": 0, "label": "pos"}\n')
    (tmp_path / "errors.jsonl").write_text('{"row": 1, "error": "empty"}\n')
    database.set_job(job["id"], status="succeeded", output_path=str(tmp_path / "predictions.jsonl"))
    out = run("jobs", "output", job["id"], "-o", tmp_path / "out.jsonl")
    assert out.out == f"{tmp_path / 'out.jsonl'}\n" and (tmp_path / "out.jsonl").read_text().startswith('{"row": 0')
    run("output", job["id"], "-o", tmp_path / "err.jsonl", "--errors")
    assert (tmp_path / "err.jsonl").read_text() == '{"row": 1, "error": "empty"}\n'


@pytest.mark.parametrize(("status", "code"), [("succeeded", 0), ("failed", 1), ("cancelled", 2)])
def test_watch_exit_code_says_how_the_job_ended(run, labelled, database, status, code):
    database.model("sentiment")
    job = run("submit", "evaluate", "model=sentiment", f"dataset_id={labelled['id']}", "--json").json()
    database.event(job["id"], "metric", step=10, data={"loss": 0.125})
    database.event(job["id"], "log", "evaluating 3 rows")
    error = {"error_code": "bad_data", "error_message": "row 2 is empty"} if status == "failed" else {}
    database.set_job(job["id"], status=status, progress_fraction=1.0, progress_stage="evaluating",
                     progress_done=3, progress_total=3, **error)
    result = run("watch", job["id"], "--interval", "0.05")
    assert result.code == code, result
    assert "evaluating 3 rows" in result.out and "loss 0.1250" in result.out and "3/3 rows" in result.out
    last = result.out.strip().splitlines()[-1]
    assert last == f"job {job['id']} {status}" + (": bad_data: row 2 is empty" if error else "")


def test_watch_follows_a_running_job_until_it_ends(sdk, labelled, database, capsys):
    database.model("sentiment")
    job = sdk.submit("finetune", {"base_model": "sentiment", "train_dataset_id": labelled["id"]})
    database.set_job(job["id"], status="running", progress_fraction=0.5, progress_stage="training",
                     progress_done=5, progress_total=10, eta_seconds=65)
    polls = []

    class Finishing(type(sdk)):
        def job(self, job_id):
            polls.append(current := super().job(job_id))
            if len(polls) == 1:  # the worker moves on between two polls
                database.event(job_id, "metric", step=10, data={"loss": 0.5})
                database.set_job(job_id, status="succeeded", progress_fraction=1.0, progress_done=10, eta_seconds=0)
            return current

    ended = watch(Finishing(sdk.url, sdk.http.headers["Authorization"].split()[1]), job["id"], interval=0.01)
    assert [p["status"] for p in polls] == ["running", "succeeded"] and ended["status"] == "succeeded"
    out = capsys.readouterr().out
    assert "10/10 steps" in out and "loss 0.5000" in out and out.strip().endswith(f"job {job['id']} succeeded")


def test_models_evaluations_and_compare(run, labelled, database):
    first = database.model("sentiment", metrics={"accuracy": 0.7})
    second = database.model("sentiment", metrics={"accuracy": 0.8})
    rival = database.model("rival")
    database.evaluation(first, labelled["id"], {"accuracy": 0.7, "f1_macro": 0.6}, "sentiment:1")
    database.evaluation(second, labelled["id"], {"accuracy": 0.8, "f1_macro": 0.75}, "sentiment:2")
    latest_rival = database.evaluation(rival, labelled["id"], {"accuracy": 0.9, "f1_macro": 0.85,
                                                                "confusion_matrix": {"labels": ["neg", "pos"],
                                                                                     "matrix": [[1, 0], [0, 2]]}},
                                       "rival:1")
    assert [m["name"] for m in run("models", "list", "--json").json()] == ["rival", "sentiment", "sentiment"]
    shown = run("models", "show", "sentiment").out.splitlines()
    assert [line.split()[2] for line in shown[1:]] == ["2", "1"] and "accuracy=0.8000" in shown[1]
    one_line_error(run("models", "show", "nope"), "error: model_not_found: no model named 'nope'")
    evaluations = run("evaluations", "list", "--model", "sentiment", "--dataset", labelled["id"], "--json").json()
    assert [e["model_ref"] for e in evaluations] == ["sentiment:2", "sentiment:1"]
    detail = run("evaluations", "show", latest_rival)
    assert "accuracy  0.9000" in detail.out and "confusion matrix" in detail.out
    compared = run("models", "compare", "sentiment", "rival", "--dataset", labelled["id"])
    rows = {line.split()[0]: line.split()[1:] for line in compared.out.splitlines()}
    assert rows["METRIC"] == ["SENTIMENT", "RIVAL"]
    assert rows["accuracy"] == ["0.8000", "0.9000"] and rows["f1_macro"] == ["0.7500", "0.8500"]
    assert rows["model"] == ["sentiment:2", "rival:1"]
    as_json = run("models", "compare", "sentiment:1", "rival", "--dataset", labelled["id"], "--json").json()
    assert as_json["sentiment:1"]["metrics"]["accuracy"] == 0.7
    one_line_error(run("models", "compare", "sentiment", "ghost", "--dataset", labelled["id"]),
                   f"model 'ghost' has no evaluation on dataset {labelled['id']}")


def test_workers_table_and_json(run, database):
    from db.services.workers import record_heartbeat

    with database.factory.begin() as session:
        record_heartbeat(session, "gpu@h1", "h1", 10, ["gpu"], {"kind": "cuda", "name": "NVIDIA H200",
                                                                "memory_bytes": 141 << 30})
    assert [w["name"] for w in run("workers", "--json").json()] == ["gpu@h1"]
    lines = run("workers").out.splitlines()
    assert lines[0].split() == ["NAME", "HOST", "QUEUES", "DEVICE", "ALIVE", "LAST", "SEEN", "RUNNING"]
    assert lines[1].split()[:6] == ["gpu@h1", "h1", "gpu", "NVIDIA", "H200,", "141"]


def test_health_and_openapi(run):
    assert run("health", "--json").json()["status"] == "ok"
    assert "database  ok" in run("health").out
    assert "/api/v1/jobs" in run("openapi").json()["paths"]


def test_url_and_token_from_flag_environment_config_file_or_data_dir(server, token, cli_env, tmp_path, capsys):
    from nightshift.cli import main

    refused = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "home" / ".config" / "nightshift" / "config.toml"
    config.parent.mkdir(parents=True)

    def code(*argv) -> int:
        capsys.readouterr()
        return main(["jobs", "list", *argv])

    config.write_text(f'url = "{server}"\ntoken = "{token}"\n')  # the default file alone
    assert code() == 0
    cli_env.setenv("NIGHTSHIFT_TOKEN", "wrong")  # the environment wins over the file
    assert code() == 1 and "error: invalid_token" in capsys.readouterr().err
    assert code("--token", token) == 0  # a flag wins over the environment
    cli_env.setenv("NIGHTSHIFT_API_URL", refused)
    assert code("--token", token) == 1 and "cannot reach" in capsys.readouterr().err
    assert code("--token", token, "--url", server) == 0
    other = tmp_path / "other.toml"
    other.write_text(f'url = "{server}"\ntoken = "{token}"\n')
    cli_env.delenv("NIGHTSHIFT_API_URL")
    cli_env.delenv("NIGHTSHIFT_TOKEN")
    config.write_text('url = "nowhere"\n')
    cli_env.setenv("NIGHTSHIFT_CONFIG", str(other))  # NIGHTSHIFT_CONFIG names another file
    assert code() == 0
    cli_env.setenv("NIGHTSHIFT_CONFIG", str(tmp_path / "missing.toml"))
    assert code() == 1 and "missing.toml (NIGHTSHIFT_CONFIG) does not exist" in capsys.readouterr().err
    cli_env.delenv("NIGHTSHIFT_CONFIG")
    config.write_text(f'url = "{server}"\n')  # no token anywhere but the local stack's data dir
    assert code() == 1 and "error: no token" in capsys.readouterr().err
    (tmp_path / "cli-data").mkdir()
    (tmp_path / "cli-data" / "token").write_text(token + "\n")
    assert code() == 0

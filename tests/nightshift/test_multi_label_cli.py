"""Multi-label data and jobs from the `nightshift` command: a label separator at upload, a threshold at submit."""

from __future__ import annotations

TASK = "multi-label-classification"


def test_upload_with_a_label_separator_and_submit_with_a_threshold(run, tmp_path):
    path = tmp_path / "topics.tsv"
    path.write_text("text\ttopics\nfood and rooms\tfood|room\nnothing\t\n")

    uploaded = run("upload", path, "--task", TASK, "--label-column", "topics", "--label-separator", "|", "--json")

    assert uploaded.code == 0, uploaded
    dataset = uploaded.json()
    assert dataset["task"] == TASK and dataset["stats"]["label_distribution"] == {"food": 1, "room": 1}
    submitted = run("submit", "finetune", "base_model=all-MiniLM-L6-v2", f"train_dataset_id={dataset['id']}",
                    "threshold=0.4", "--task", TASK, "--json")
    assert submitted.code == 0, submitted
    assert submitted.json()["params"]["threshold"] == 0.4

    refused = run("upload", path, "--label-column", "topics", "--label-separator", "|")
    assert refused.code == 1 and f"label_separator applies to task={TASK}" in refused.err

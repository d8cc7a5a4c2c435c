"""Job runners: orchestration between the database row, files and `worker/ml/` (no torch here)."""

from __future__ import annotations

from worker.jobs import evaluate, finetune, inference, merge, pretrain

RUNNERS = {
    "finetune": finetune.run,
    "evaluate": evaluate.run,
    "batch_inference": inference.run,
    "pretrain": pretrain.run,
    "merge": merge.run,
}

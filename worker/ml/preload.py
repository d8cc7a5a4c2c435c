"""Import the ML libraries once in the worker's main process, before it forks job processes.

Every job runs in a fresh pool process (`worker_max_tasks_per_child=1`) forked from the worker's
main process, so whatever the main process has imported, each job has from its first instruction.
Importing torch, transformers, datasets and the task modules costs a job process several seconds
on a small CPU (about 7 s on two loaded cores); done once here, no job pays it.

Nothing here runs a torch operation or touches CUDA: OpenMP thread pools and CUDA contexts do not
survive a fork, and each pool process chooses its GPU after the fork (`worker.gpus`), before CUDA
initialises in it.
"""

from __future__ import annotations

import importlib
import logging
import time

log = logging.getLogger(__name__)

# What job processes import, heaviest first; the model modules of the architectures the tasks name.
MODULES = (
    "torch",
    "transformers",
    "transformers.trainer",
    "transformers.models.auto.modeling_auto",
    "transformers.models.bert.modeling_bert",
    "transformers.models.t5.modeling_t5",
    "transformers.models.bart.modeling_bart",
    "transformers.models.gpt2.modeling_gpt2",
    "transformers.models.encoder_decoder.modeling_encoder_decoder",
    "datasets",
    "worker.ml.training",
    "worker.ml.predict",
    "worker.ml.seq2seq",
    "worker.ml.generation",
    "worker.ml.tasks.text_classification",
    "worker.ml.tasks.multi_label_classification",
    "worker.ml.tasks.token_classification",
    "worker.ml.tasks.question_answering",
    "worker.ml.tasks.translation",
    "worker.ml.tasks.summarization",
    "worker.ml.tasks.text_generation",
)


def preload(modules: tuple[str, ...] = MODULES) -> float:
    """Import `modules` (those missing are logged and skipped); return the seconds it took."""
    started = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # an optional architecture or library this install lacks
            log.warning("preload: cannot import %s (%s); jobs that need it import it themselves", name, exc)
    seconds = time.perf_counter() - started
    log.info("preloaded the ML libraries in %.1f s; job processes start with them imported", seconds)
    return seconds

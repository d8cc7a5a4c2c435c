"""Where a batch_inference job's time goes: py-spy samples the worker's job process.

Starts the one-machine stack, submits one batch_inference job over --docs SST-2 sentences with the
packaged MiniLM (2-label head), and records the worker and its job process with `py-spy record
--subprocesses`) until the job ends (time in torch's C++ kernels counts for the Python line that called them). Prints the functions with the most
samples where they themselves ran ("own") and including what they called ("total").

    python bench/profile_inference.py [--docs 20000] [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import command_line, sst2_rows
from infer_throughput import MAX_LENGTH, fine_tune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        sys.exit("py-spy is not installed: pip install py-spy")
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    from nightshift.cli import ensure_local_token
    from nightshift.client import Client
    from nightshift.stack import Stack, free_port
    from worker.config import Settings

    rows = sst2_rows(args.docs + 500, seed=21)
    with tempfile.TemporaryDirectory(prefix="nightshift-profile-") as tmp:
        folder = Path(tmp)
        model = fine_tune(folder / "model", rows[args.docs:])
        docs = folder / "docs.jsonl"
        docs.write_text("".join(json.dumps({"text": text}) + "\n" for text, _ in rows[: args.docs]))
        settings = Settings.from_env(data_dir=str(folder / "data"), database_url="", api_port=free_port(), api_workers=1)
        stack = Stack(settings)
        settings = stack.start(redis_url=None)
        try:
            client = Client(settings.base_url, ensure_local_token(settings))
            dataset = client.upload_dataset(docs, text_column="text")
            # A first small job: the budget and precision probes are remembered, as on a used machine.
            warm = client.submit("batch_inference", {"model": model, "dataset_id": dataset["id"], "max_length": MAX_LENGTH,
                                                     "chunk_rows": 16})
            client.wait(warm["id"])
            raw = folder / "profile.txt"
            recorder = subprocess.Popen([py_spy, "record", "--pid", str(stack.processes["worker"].pid), "--subprocesses",
                                         "--rate", "50", "--format", "raw", "--output", str(raw)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2)
            started = time.perf_counter()
            job = client.submit("batch_inference", {"model": model, "dataset_id": dataset["id"], "max_length": MAX_LENGTH})
            job = client.wait(job["id"], timeout=3600, poll=0.5)
            elapsed = time.perf_counter() - started
            recorder.send_signal(2)  # SIGINT: py-spy writes what it sampled
            recorder.wait(timeout=60)
            assert job["status"] == "succeeded", job["error"]
        finally:
            stack.stop()
        report(raw, args.top, elapsed, args.docs)


def report(raw: Path, top: int, elapsed: float, docs: int) -> None:
    own, total = collections.Counter(), collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "run_job" not in stack:  # the job process only, not the worker's idle main loop
            continue
        count = int(count)
        samples += count
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]  # per function, not per line
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    print(f"command: {command_line()}")
    print(f"job: {docs} documents in {elapsed:.1f} s submit to done; {samples} samples of the job process")
    print(f"{'own %':>7}  function (own: where the sample was)")
    for name, count in own.most_common(top):
        print(f"{100 * count / samples:7.1f}  {name}")
    print(f"\n{'total %':>7}  function (total: including what it called)")
    for name, count in total.most_common(top):
        print(f"{100 * count / samples:7.1f}  {name}")


if __name__ == "__main__":
    main()

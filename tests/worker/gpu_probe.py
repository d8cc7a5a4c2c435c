"""A test-only task that reports what its pool process sees; the GPU test loads it into a real worker."""

from __future__ import annotations

import json
import os
import sys
import time

import redis
from billiard.process import current_process

from worker.celery_app import app

PROBE_SECONDS = 0.5  # long enough that one pool process cannot take every probe


@app.task(name="tests.gpu_probe")
def gpu_probe(redis_url: str, key: str) -> None:
    """Push this process's pool index, pid and CUDA_VISIBLE_DEVICES onto the Redis list `key`."""
    seen = {
        "index": current_process().index,
        "pid": os.getpid(),
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
        # The worker imports torch before forking (preload); what must not have happened yet is CUDA
        # initialising, which reads CUDA_VISIBLE_DEVICES once.
        "cuda_initialized": "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized(),
    }
    client = redis.Redis.from_url(redis_url)
    client.rpush(key, json.dumps(seen))
    client.close()
    time.sleep(PROBE_SECONDS)

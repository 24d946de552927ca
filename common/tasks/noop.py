"""``noop``: shards that do (almost) nothing; for measuring overhead and testing the scheduler.

Params: ``shards`` (count), ``sleep`` (seconds per shard, or a map of shard
index to seconds), ``fail`` (shard indices whose compute raises), ``payload``
(bytes of zeros each shard returns).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from common.errors import TaskError, ValidationError
from common.tasks.base import JobView, Shard, TaskType, check_params

MAX_SHARDS = 1_000_000
MAX_SLEEP = 3600.0  # seconds: a running shard cannot be interrupted, so a longer one would hold a slot for good
PARAMS = ("shards", "sleep", "fail", "payload")


class NoopTask(TaskType):
    name = "noop"

    def validate(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        check_params(self.name, params, PARAMS)
        shards = params.get("shards", 1)
        if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= MAX_SHARDS:
            raise ValidationError(f"noop: shards must be an integer from 1 to {MAX_SHARDS}")
        sleep = params.get("sleep", 0.0)
        if isinstance(sleep, dict):
            sleep = {str(k): _seconds(v) for k, v in sleep.items()}
        else:
            sleep = _seconds(sleep)
        fail = params.get("fail", [])
        if not isinstance(fail, list) or not all(isinstance(i, int) for i in fail):
            raise ValidationError("noop: fail must be a list of shard indices")
        payload = params.get("payload", 0)
        if not isinstance(payload, int) or not 0 <= payload <= 2**30:
            raise ValidationError("noop: payload must be a byte count up to 1 GiB")
        return {"shards": shards, "sleep": sleep, "fail": fail, "payload": payload}

    def shard_count(self, params: dict[str, Any]) -> int | None:
        return params["shards"]

    def plan(self, job: JobView) -> list[Shard]:
        p = job.params
        job.allocate("done", (p["shards"],), np.uint8)
        sleeps = p["sleep"]
        return [
            Shard(i, {
                "sleep": sleeps.get(str(i), 0.0) if isinstance(sleeps, dict) else sleeps,
                "fail": i in p["fail"],
                "payload": p["payload"],
            })
            for i in range(p["shards"])
        ]

    def compute(self, params: dict[str, Any], arrays: dict[str, np.ndarray], device: str) -> dict[str, np.ndarray]:
        if params.get("sleep"):
            time.sleep(params["sleep"])
        if params.get("fail"):
            raise TaskError("noop shard asked to fail")
        return {"data": np.zeros(params.get("payload", 0), np.uint8)}

    def merge(self, job: JobView, shard: Shard, result: dict[str, np.ndarray]) -> None:
        job.output("done")[shard.index] = 1

    def outputs(self, job: JobView) -> dict[str, np.ndarray]:
        return {"done": job.output("done")}


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= MAX_SLEEP):
        raise ValidationError(f"noop: sleep must be seconds from 0 to {MAX_SLEEP:g} (or a map of shard index to "
                              f"such seconds), not {value!r}")
    return float(value)

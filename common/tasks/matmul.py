"""``matmul``: C = A @ B, sharded by rows or as a 2-D grid of blocks.

Params: ``splits`` is ``[rows, cols]`` (a grid; ``[r, 1]`` is the row
partition) or ``"auto"``, which over-decomposes rows over the ready
providers' slots so a faster provider takes more shards.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.errors import ValidationError
from common.tasks.base import JobView, Shard, TaskType, check_params

#: ``auto`` makes this many row shards per ready slot
AUTO_SHARDS_PER_SLOT = 2
MAX_SPLITS = 4096
MAX_RESULT_ELEMENTS = 2**31  # the head allocates the result before any shard runs


def block_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering ``0..n``; the first ``n % parts`` are one longer."""
    size, extra = divmod(n, parts)
    bounds = []
    for b in range(parts):
        start = b * size + min(b, extra)
        bounds.append((start, start + size + (1 if b < extra else 0)))
    return bounds


def parse_splits(value: Any) -> tuple[int, int] | str:
    """Accept ``"auto"``, ``N`` (rows), ``"RxC"``, or a pair; return ``(r, c)`` or ``"auto"``."""
    if value in (None, "auto"):
        return "auto"
    if isinstance(value, str):
        parts = value.lower().replace("×", "x").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValidationError(f"splits {value!r} is not 'auto', N or RxC") from None
        value = nums[0] if len(nums) == 1 else nums
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, 1]
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValidationError(f"splits {value!r} is not 'auto', N or a pair [rows, cols]")
    r, c = value
    if r < 1 or c < 1:
        raise ValidationError(f"splits {r}x{c}: both counts must be at least 1")
    if r > MAX_SPLITS or c > MAX_SPLITS:
        raise ValidationError(f"splits {r}x{c}: at most {MAX_SPLITS} per dimension")
    return r, c


def _check_matrix(name: str, arr: np.ndarray | None) -> np.ndarray:
    if arr is None:
        raise ValidationError(f"matmul needs an array {name!r}")
    if arr.ndim != 2:
        raise ValidationError(f"{name.upper()} must be 2-D, got shape {arr.shape}")
    if arr.dtype.kind not in "iufc":
        raise ValidationError(f"{name.upper()} has dtype {arr.dtype}; matmul needs a numeric dtype")
    if arr.size == 0:
        raise ValidationError(f"{name.upper()} is empty (shape {arr.shape})")
    return arr


class MatmulTask(TaskType):
    name = "matmul"

    def validate(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        a = _check_matrix("a", arrays.get("a"))
        b = _check_matrix("b", arrays.get("b"))
        if a.shape[1] != b.shape[0]:
            raise ValidationError(f"inner dimensions differ: A is {a.shape}, B is {b.shape}")
        if a.shape[0] * b.shape[1] > MAX_RESULT_ELEMENTS:
            raise ValidationError(f"the result would be {a.shape[0]}x{b.shape[1]} = {a.shape[0] * b.shape[1]} "
                                  f"elements, over the limit of {MAX_RESULT_ELEMENTS}")
        extra = set(arrays) - {"a", "b"}
        if extra:
            raise ValidationError(f"matmul takes arrays 'a' and 'b' only, got also {sorted(extra)}")
        check_params(self.name, params, ["splits"])
        splits = parse_splits(params.get("splits", "auto"))
        if splits != "auto":
            r, c = splits
            if r > a.shape[0] or c > b.shape[1]:
                raise ValidationError(
                    f"splits {r}x{c} is larger than the result {a.shape[0]}x{b.shape[1]}")
            splits = [r, c]
        return {"splits": splits}

    def shard_count(self, params: dict[str, Any]) -> int | None:
        splits = params["splits"]
        return None if splits == "auto" else splits[0] * splits[1]

    def plan(self, job: JobView) -> list[Shard]:
        a, b = job.input("a"), job.input("b")
        m, n = a.shape[0], b.shape[1]
        splits = job.params["splits"]
        if splits == "auto":
            splits = [min(m, max(1, AUTO_SHARDS_PER_SLOT * job.ready_slots)), 1]
        job.state["grid"] = splits
        job.allocate("c", (m, n), np.result_type(a.dtype, b.dtype))
        rows, cols = block_bounds(m, splits[0]), block_bounds(n, splits[1])
        return [
            Shard(i * len(cols) + j, {"rows": list(rows[i]), "cols": list(cols[j])})
            for i in range(len(rows)) for j in range(len(cols))
        ]

    def inputs(self, job: JobView, shard: Shard) -> dict[str, np.ndarray]:
        (r0, r1), (c0, c1) = shard.params["rows"], shard.params["cols"]
        b = job.input("b")
        return {"a": job.input("a")[r0:r1], "b": b if (c0, c1) == (0, b.shape[1]) else b[:, c0:c1]}

    def cache_keys(self, job: JobView, shard: Shard) -> dict[str, str]:
        c0, c1 = shard.params["cols"]
        return {"b": f"{job.job_id}/b/{c0}:{c1}"}  # every shard in this column band uses the same B block

    def output_targets(self, job: JobView, shard: Shard) -> dict[str, np.ndarray]:
        (r0, r1), (c0, c1) = shard.params["rows"], shard.params["cols"]
        return {"c": job.output("c")[r0:r1, c0:c1]}

    def compute(self, params: dict[str, Any], arrays: dict[str, np.ndarray], device: str,
                out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        a, b = arrays["a"], arrays["b"]
        if device == "cpu":
            c = (out or {}).get("c")
            if c is not None and c.shape == (a.shape[0], b.shape[1]) and c.dtype == np.result_type(a.dtype, b.dtype):
                return {"c": np.matmul(a, b, out=c)}  # straight into the head's output file
            return {"c": np.matmul(a, b)}
        import torch  # only providers with a GPU get here

        ta, tb = torch.from_numpy(np.ascontiguousarray(a)).to(device), torch.from_numpy(np.ascontiguousarray(b)).to(device)
        return {"c": (ta @ tb).cpu().numpy()}

    def merge(self, job: JobView, shard: Shard, result: dict[str, np.ndarray]) -> None:
        (r0, r1), (c0, c1) = shard.params["rows"], shard.params["cols"]
        c = result.get("c")
        out = job.output("c")
        if c is None or c.shape != (r1 - r0, c1 - c0):
            got = None if c is None else c.shape
            raise ValidationError(f"shard {shard.index}: result block has shape {got}, expected {(r1 - r0, c1 - c0)}")
        if not np.may_share_memory(c, out):  # else the provider wrote it in place
            out[r0:r1, c0:c1] = c

    def outputs(self, job: JobView) -> dict[str, np.ndarray]:
        return {"c": job.output("c")}

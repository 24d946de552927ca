"""``filemean``: the element-wise mean of F files of C numbers each, as a tree of sums with fan-in P.

Level 1 has ceil(F/P) tasks, each summing up to P files into a float64
accumulator; each further level sums up to P partial sums the same way, until
one sum is left (ceil(log_P F) levels); the head divides it by F. A task reads
at most ``MAX_OPEN`` (5) files at a time, a sliding window in file order, so it
holds at most 5 files plus the accumulator whatever P is, and its sum is
deterministic (always added in the same order).

Inputs come one of two ways:

- ``urls`` (uint8, newline-joined UTF-8): paths or fsspec URLs the providers
  read themselves (``file://``, ``s3://``, ``gs://``, plain paths). A first
  one-task round (the probe) reads the first file to learn C; every other
  file is checked against it, and a mismatch fails the job naming the file.
- ``data`` (flat numbers) with ``lengths`` (numbers per file) and optionally
  ``names`` (newline-joined): files the client uploaded, for providers that
  cannot read them. The head keeps them in its job dir and sends each task its
  rows inline.

Partial sums live in the head's job dir (``level{L}`` outputs, sent inline to
the next level) unless params ``intermediate`` is a URL prefix: then providers
write them to ``PREFIX/JOB_ID/level{L}/{i:06d}.npy`` and the next level reads
them there. Merges write into fixed rows, so a replayed merge changes nothing;
each level's outputs are on disk and ``job.state["level"]`` is journaled with
every round, so a restarted head resumes at the level it was on.

Files are ``.npy`` (any real dtype, read flat; recognised by content) or text
with one number per line; fsspec's ``compression="infer"`` reads ``.gz`` etc.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from common.errors import TaskError, ValidationError
from common.tasks.base import JobView, Shard, TaskType, check_params
from common.tasks.numberfiles import read_numbers, sum_files, sum_rows, write_partial

MAX_FANIN = 10_000
MAX_LEVEL_ELEMENTS = 2**31  # the head allocates a level's partial sums before its tasks run
URL_BYTES_PER_TASK = 128 * 1024  # a task's URL list travels in its message header (limit 256 KiB)
PARAMS = ("fanin", "intermediate")


def encode_names(names: list[str]) -> np.ndarray:
    """A list of paths as the uint8 array the head accepts (``urls`` or ``names``)."""
    bad = [n for n in names if not n or "\n" in n]
    if bad:
        raise ValidationError(f"filemean: file names must be non-empty and without newlines: {bad[:3]}")
    return np.frombuffer("\n".join(names).encode(), np.uint8)


def decode_names(arr: np.ndarray) -> list[str]:
    return bytes(np.asarray(arr, np.uint8)).decode("utf-8").split("\n") if len(arr) else []


def _text_array(arrays: dict[str, np.ndarray], name: str) -> list[str]:
    arr = arrays[name]
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ValidationError(f"filemean: {name!r} must be newline-joined UTF-8 as a 1-D uint8 array")
    try:
        return decode_names(arr)
    except UnicodeDecodeError:
        raise ValidationError(f"filemean: {name!r} is not UTF-8") from None


def _validate_upload(arrays: dict[str, np.ndarray]) -> tuple[int, int]:
    data, lengths = arrays.get("data"), arrays.get("lengths")
    if data is None or lengths is None:
        raise ValidationError("filemean takes 'urls' (files the providers read) or 'data' with 'lengths' "
                              "(uploaded files)")
    if data.ndim != 1 or data.dtype.kind not in "biuf":
        raise ValidationError(f"filemean: 'data' must be 1-D real numbers, got {data.dtype} {data.shape}")
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu" or len(lengths) == 0:
        raise ValidationError("filemean: 'lengths' must be a non-empty 1-D integer array (numbers per file)")
    names = _text_array(arrays, "names") if "names" in arrays else [f"file #{i}" for i in range(len(lengths))]
    if len(names) != len(lengths):
        raise ValidationError(f"filemean: {len(names)} names for {len(lengths)} files")
    if int(lengths.sum()) != data.size:
        raise ValidationError(f"filemean: lengths add up to {int(lengths.sum())}, 'data' has {data.size} numbers")
    length = int(lengths[0])
    if length <= 0:
        raise ValidationError(f"filemean: file {names[0]} holds no numbers")
    odd = np.flatnonzero(lengths != length)
    if len(odd):
        i = int(odd[0])
        raise ValidationError(f"filemean: file {names[i]} has {int(lengths[i])} numbers but {names[0]} has "
                              f"{length}: every file must hold the same count")
    return len(lengths), length


def tree_sizes(count: int, fanin: int) -> list[int]:
    """Items per level: ``[F, ceil(F/P), ..., 1]``, at least one reduction level."""
    sizes = [count]
    while len(sizes) == 1 or sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / fanin))
    return sizes


class FileMeanTask(TaskType):
    name = "filemean"

    def validate(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        check_params(self.name, params, PARAMS)
        fanin = params.get("fanin", 8)
        if not isinstance(fanin, int) or isinstance(fanin, bool) or not 2 <= fanin <= MAX_FANIN:
            raise ValidationError(f"filemean: fanin must be an integer from 2 to {MAX_FANIN}, got {fanin!r}")
        intermediate = params.get("intermediate") or None
        if intermediate is not None and (not isinstance(intermediate, str) or "\n" in intermediate):
            raise ValidationError(f"filemean: intermediate must be a URL prefix, got {intermediate!r}")
        out = {"fanin": fanin, "intermediate": intermediate}
        longest = len(intermediate.encode()) + 48 if intermediate else 0  # PREFIX/JOB_ID/levelL/000000.npy
        if "urls" in arrays:
            extra = set(arrays) - {"urls"}
            if extra:
                raise ValidationError(f"filemean: 'urls' comes alone, got also {sorted(extra)}")
            urls = _text_array(arrays, "urls")
            if not urls or not all(urls):
                raise ValidationError("filemean needs at least one file, and no empty URL")
            longest = max(longest, max(len(u.encode()) for u in urls))
            out.update(mode="urls", count=len(urls), length=None)
        else:
            extra = set(arrays) - {"data", "lengths", "names"}
            if extra:
                raise ValidationError(f"filemean: unknown arrays {sorted(extra)}")
            count, length = _validate_upload(arrays)
            out.update(mode="upload", count=count, length=length)
        if longest and fanin * (longest + 4) > URL_BYTES_PER_TASK:
            raise ValidationError(f"filemean: {fanin} URLs of up to {longest} bytes make a task message too large; "
                                  f"use fanin {URL_BYTES_PER_TASK // (longest + 4)} or less")
        return out

    def shard_count(self, params: dict[str, Any]) -> int | None:
        return 1 if params["mode"] == "urls" else math.ceil(params["count"] / params["fanin"])

    # -- head: rounds --------------------------------------------------------------------------

    def plan(self, job: JobView) -> list[Shard]:
        p = job.params
        sizes = tree_sizes(p["count"], p["fanin"])
        probe = p["mode"] == "urls"
        bases = [0, 1 if probe else 0]
        for n in sizes[1:-1]:
            bases.append(bases[-1] + n)
        job.state.update(sizes=sizes, bases=bases, probe=probe, length=p["length"], level=0, finished=False)
        if probe:  # learn C from the first file before any sum
            job.allocate("probe", (1,), np.int64)
            return [Shard(0, {"op": "probe", "level": 0, "pos": 0, "url": self._urls(job)[0]})]
        return self._level(job, 1)

    @staticmethod
    def _urls(job: JobView) -> list[str]:
        return decode_names(job.input("urls"))

    @staticmethod
    def partial_url(job: JobView, level: int, pos: int) -> str:
        return f"{job.params['intermediate'].rstrip('/')}/{job.job_id}/level{level}/{pos:06d}.npy"

    def _level(self, job: JobView, level: int) -> list[Shard]:
        st, p = job.state, job.params
        fanin, length, n_in, n_out = p["fanin"], st["length"], st["sizes"][level - 1], st["sizes"][level]
        final, remote = level == len(st["sizes"]) - 1, p["intermediate"] is not None
        if n_out * length > MAX_LEVEL_ELEMENTS:
            raise ValidationError(f"filemean: {n_out} partial sums of {length} numbers exceed the head's limit "
                                  f"of {MAX_LEVEL_ELEMENTS} elements; use a larger fanin")
        st["level"] = level
        if final or not remote:
            job.allocate(f"level{level}", (n_out, length), np.float64)
        urls = self._urls(job) if level == 1 and p["mode"] == "urls" else None
        shards = []
        for i in range(n_out):
            lo, hi = i * fanin, min((i + 1) * fanin, n_in)
            sp: dict[str, Any] = {"op": "sum", "level": level, "pos": i, "lo": lo, "hi": hi, "length": length}
            if urls is not None:
                sp.update(urls=urls[lo:hi], ref=urls[0])
            elif level > 1 and remote:
                sp.update(urls=[self.partial_url(job, level - 1, j) for j in range(lo, hi)],
                          ref=self.partial_url(job, level - 1, 0))
            if remote and not final:
                sp["out"] = self.partial_url(job, level, i)
            shards.append(Shard(st["bases"][level] + i, sp))
        return shards

    def inputs(self, job: JobView, shard: Shard) -> dict[str, np.ndarray]:
        sp = shard.params
        if sp["op"] == "probe" or "urls" in sp:
            return {}
        lo, hi = sp["lo"], sp["hi"]
        if sp["level"] == 1:  # uploaded files, one row each
            return {"rows": job.input("data").reshape(job.params["count"], sp["length"])[lo:hi]}
        return {"rows": job.output(f"level{sp['level'] - 1}")[lo:hi]}

    def progress(self, job: JobView) -> tuple[int, int] | None:
        """Rounds (the probe, then one per level of the tree)."""
        st = job.state
        if "sizes" not in st:
            return None
        total = len(st["sizes"]) - 1 + st["probe"]
        done = total if st["finished"] else st["level"] - (0 if st["probe"] else 1)
        return done, total

    def merge(self, job: JobView, shard: Shard, result: dict[str, np.ndarray]) -> None:
        sp = shard.params
        if sp["op"] == "probe":
            n = result.get("length")
            if n is None or n.shape != (1,) or int(n[0]) <= 0:
                raise ValidationError(f"filemean probe: bad result {n!r}")
            job.output("probe")[0] = int(n[0])
            return
        if "out" in sp:  # the partial sum is in the object store, under a name fixed by its position
            if result.get("written") is None:
                raise ValidationError(f"filemean shard {shard.index}: no partial sum written to {sp['out']}")
            return
        total = result.get("sum")
        if total is None or total.shape != (sp["length"],):
            got = None if total is None else total.shape
            raise ValidationError(f"filemean shard {shard.index}: sum has shape {got}, expected ({sp['length']},)")
        job.output(f"level{sp['level']}")[sp["pos"]] = total

    def next_round(self, job: JobView) -> list[Shard]:
        st = job.state
        if st["level"] == 0:
            st["length"] = int(job.output("probe")[0])
            return self._level(job, 1)
        if st["level"] < len(st["sizes"]) - 1:
            return self._level(job, st["level"] + 1)
        top = job.output(f"level{st['level']}")
        job.allocate("mean", (st["length"],), np.float64)[:] = top[0] / job.params["count"]
        st["finished"] = True
        return []

    def outputs(self, job: JobView) -> dict[str, np.ndarray]:
        return {"mean": job.output("mean")}

    # -- provider ------------------------------------------------------------------------------

    def compute(self, params: dict[str, Any], arrays: dict[str, np.ndarray], device: str) -> dict[str, np.ndarray]:
        if params["op"] == "probe":
            n = read_numbers(params["url"]).size
            if n == 0:
                raise TaskError(f"file {params['url']} holds no numbers")
            return {"length": np.array([n], np.int64)}
        length = params["length"]
        if "urls" in params:
            acc = sum_files(params["urls"], length, params.get("ref", "the first file"))
        else:
            acc = sum_rows(arrays["rows"], length)
        if params.get("out"):
            write_partial(params["out"], acc)
            return {"written": np.array([length], np.int64)}
        return {"sum": acc}

"""Job arrays on disk: inputs saved as ``.npy`` and memory-mapped, outputs written in place.

A large job does not need to fit in the head's memory: shards are views into
the memory-mapped inputs and each result block is copied into a memory-mapped
output file, so the whole output never sits in the head's heap (only the
blocks being received do; see bench/memory.py).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from common import localdata

SAFE_ARRAY_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class JobFiles:
    """The arrays of one job under ``DIR/jobs/JOB_ID/``."""

    def __init__(self, root: Path):
        self.root = root  # DATA_DIR/jobs/JOB_ID
        self.data_root = root.parents[1]
        self._inputs: dict[str, np.ndarray] = {}
        self._outputs: dict[str, np.ndarray] = {}

    def _path(self, kind: str, name: str) -> Path:
        if not SAFE_ARRAY_NAME.match(name):
            raise ValueError(f"array name {name!r} is not a safe file name")
        return self.root / f"{kind}-{name}.npy"

    def save_inputs(self, arrays: dict[str, np.ndarray]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for name, arr in arrays.items():
            path = self._path("in", name)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            tmp.replace(path)

    def adopt_inputs(self, files: dict[str, Path], opened: dict[str, np.ndarray]) -> None:
        """Take ``.npy`` files a client on this machine wrote (common/localdata.py) as inputs, by renaming;
        ``opened`` are their memory maps, which stay valid across the rename and become the inputs'."""
        self.root.mkdir(parents=True, exist_ok=True)
        for name, path in files.items():
            os.replace(path, self._path("in", name))
            self._inputs[name] = opened[name]

    def input(self, name: str) -> np.ndarray:
        if name not in self._inputs:
            path = self._path("in", name)
            self._inputs[name] = np.load(path, mmap_mode="r", allow_pickle=False) if path.exists() else None
        arr = self._inputs[name]
        if arr is None:
            raise KeyError(name)
        return arr

    def input_names(self) -> list[str]:
        return sorted(p.name[3:-4] for p in self.root.glob("in-*.npy"))

    def allocate(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        self.root.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(self._path("out", name), mode="w+", dtype=np.dtype(dtype), shape=tuple(shape))
        self._outputs[name] = out
        return out

    def output(self, name: str) -> np.ndarray:
        if name not in self._outputs:
            self._outputs[name] = np.load(self._path("out", name), mmap_mode="r+", allow_pickle=False)
        return self._outputs[name]

    def output_names(self) -> list[str]:
        return sorted(p.name[4:-4] for p in self.root.glob("out-*.npy"))

    def locate(self, arrays: dict[str, Any]) -> dict[str, dict]:
        """References (common/localdata.py) to those of ``arrays`` that are views into this job's files."""
        if not arrays:
            return {}
        maps = {**{str(self._path("in", n)): a for n, a in self._inputs.items()},
                **{str(self._path("out", n)): a for n, a in self._outputs.items()}}
        refs = {name: localdata.locate(arr, maps, self.data_root) for name, arr in arrays.items()}
        return {name: ref for name, ref in refs.items() if ref is not None}

    def output_paths(self) -> list[Path]:
        return sorted(self.root.glob("out-*.npy"))

    def flush(self) -> None:
        for arr in self._outputs.values():
            if isinstance(arr, np.memmap):
                arr.flush()

    def release(self, flush: bool = True) -> None:
        """Drop open maps (files stay) so a finished job costs no address space; without ``flush`` their
        dirty pages stay in the page cache for the group commit's fsync (head_node/commit.py)."""
        if flush:
            self.flush()
        self._inputs.clear()
        self._outputs.clear()

    def delete(self) -> None:
        self._inputs.clear()
        self._outputs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

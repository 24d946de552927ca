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
        self._maps: dict[tuple[str, str], localdata.Mapped | None] = {}  # ("in" or "out", name): open; None: no file

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

    def _keep(self, kind: str, name: str, arr: np.ndarray, offset: int) -> np.ndarray:
        self._maps[kind, name] = localdata.Mapped.of(arr, offset, self._path(kind, name).relative_to(self.data_root))
        return arr

    def adopt_inputs(self, files: dict[str, Path], opened: dict[str, tuple[np.ndarray, int]]) -> None:
        """Take ``.npy`` files a client on this machine wrote (common/localdata.py) as inputs, by renaming;
        ``opened`` are their memory maps (``localdata.map_npy``), which stay valid across the rename and
        become the inputs'."""
        self.root.mkdir(parents=True, exist_ok=True)
        for name, path in files.items():
            os.replace(path, self._path("in", name))
            self._keep("in", name, *opened[name])

    def input(self, name: str) -> np.ndarray:
        if ("in", name) not in self._maps:
            path = self._path("in", name)
            if not path.exists():
                self._maps["in", name] = None
            else:
                self._keep("in", name, *localdata.map_npy(path))
        mapped = self._maps["in", name]
        if mapped is None:
            raise KeyError(name)
        return mapped.array

    def input_names(self) -> list[str]:
        return sorted(p.name[3:-4] for p in self.root.glob("in-*.npy"))

    def allocate(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        self.root.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(self._path("out", name), mode="w+", dtype=np.dtype(dtype), shape=tuple(shape))
        return self._keep("out", name, out, out.offset)

    def output(self, name: str) -> np.ndarray:
        mapped = self._maps.get(("out", name))
        if mapped is None:
            out = np.load(self._path("out", name), mmap_mode="r+", allow_pickle=False)
            return self._keep("out", name, out, out.offset)
        return mapped.array

    def output_names(self) -> list[str]:
        return sorted(p.name[4:-4] for p in self.root.glob("out-*.npy"))

    def locate(self, arrays: dict[str, Any]) -> dict[str, dict]:
        """References (common/localdata.py) to those of ``arrays`` that are views into this job's files."""
        if not arrays:
            return {}
        maps = [m for m in self._maps.values() if m is not None]
        refs = {name: localdata.locate(arr, maps) for name, arr in arrays.items()}
        return {name: ref for name, ref in refs.items() if ref is not None}

    def output_paths(self) -> list[Path]:
        return sorted(self.root.glob("out-*.npy"))

    def flush(self) -> None:
        for (kind, _), mapped in self._maps.items():
            if kind == "out" and isinstance(mapped.array, np.memmap):
                mapped.array.flush()

    def release(self, flush: bool = True) -> None:
        """Drop open maps (files stay) so a finished job costs no address space; without ``flush`` their
        dirty pages stay in the page cache for the group commit's fsync (head_node/commit.py)."""
        if flush:
            self.flush()
        self._maps.clear()

    def delete(self) -> None:
        self._maps.clear()
        shutil.rmtree(self.root, ignore_errors=True)

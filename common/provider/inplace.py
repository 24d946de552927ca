"""A shard's arrays in the head's files, for a provider on the head's machine (common/localdata.py): its
inputs mapped in place, its results written into the job's output file instead of sent."""

from __future__ import annotations

import numpy as np

from common import localdata
from common.localdata import LocalFiles
from common.logs import get_logger

log = get_logger("provider")


def local_inputs(local: LocalFiles | None, refs: dict) -> dict[str, np.ndarray]:
    """The shard's inputs the head named by reference, mapped from its files (read-only)."""
    if refs and local is None:
        raise ValueError("this provider did not prove it can read them")
    return {name: local.array(ref) for name, ref in refs.items()}


def output_targets(local: LocalFiles | None, refs: dict, provider_id: str) -> dict[str, np.ndarray]:
    """The regions of the head's output files that results are written to through a mapping: those
    ``LocalFiles.write`` cannot take whole (what cannot be opened here travels as bytes)."""
    targets = {}
    for name, ref in refs.items():
        if localdata.pwrite_region(ref):
            continue
        try:
            targets[name] = local.array(ref, mode="r+")
        except (AttributeError, OSError, ValueError, TypeError) as e:
            log.warning("task.write_in_place_failed", provider_id=provider_id, output=name, error=str(e))
    return targets


def write_in_place(local: LocalFiles | None, refs: dict, targets: dict[str, np.ndarray], out: dict[str, np.ndarray],
                   provider_id: str) -> list[str]:
    """Results into their regions of the head's files: with ``pwrite``, or through the mapped ``targets``
    (unless compute wrote them there itself); returns the names written, which leave ``out``."""
    written = []
    for name, ref in refs.items():
        arr, target = out.get(name), targets.get(name)
        if arr is None:
            continue
        try:
            if target is None:
                if local is None or not local.write(ref, arr):
                    continue  # sent instead; the head checks the shape of what it gets
            elif arr is not target:
                if arr.shape != target.shape:
                    continue
                np.copyto(target, arr, casting="same_kind")
        except TypeError:
            continue
        except (OSError, ValueError) as e:
            log.warning("task.write_in_place_failed", provider_id=provider_id, output=name, error=str(e))
            continue
        del out[name]
        written.append(name)
    return written

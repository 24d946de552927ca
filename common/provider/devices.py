"""Which devices a provider has, and which one it computes on.

The probe takes the torch module (or None) as an argument so tests can inject
any mix of CUDA and MPS availability on a Linux machine.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.logs import get_logger

log = get_logger(__name__)
DEVICE_KINDS = ("cuda", "mps", "cpu")


@dataclass(frozen=True)
class Device:
    kind: str  # cuda | mps | cpu
    name: str
    memory_bytes: int = 0
    index: int = 0

    @property
    def torch_name(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "memory_bytes": self.memory_bytes, "index": self.index}


def import_torch():
    """The torch module, or None when it is not installed (CPU-only providers need no torch)."""
    try:
        import torch
    except (ImportError, OSError) as e:  # OSError: a broken install (missing shared library)
        if not isinstance(e, ImportError):
            log.warning("torch.unusable", error=repr(e))
        return None
    return torch


def torch_installed() -> bool:
    """Whether torch could be imported, without paying for the import (seconds)."""
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def accelerator_possible(preference: str) -> bool:
    """Could torch find a GPU here? Only then is it imported at start-up to probe devices."""
    if preference == "cpu":
        return False
    if sys.platform == "darwin":
        return True  # Apple MPS
    return os.path.exists("/proc/driver/nvidia") or shutil.which("nvidia-smi") is not None


def total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def cpu_device() -> Device:
    name = platform.processor() or platform.machine() or "cpu"
    return Device("cpu", f"{name} ({os.cpu_count() or 1} cores)", total_memory())


def probe_devices(torch: Any) -> list[Device]:
    """Every device this machine offers, accelerators first; the CPU is always last."""
    found: list[Device] = []
    if torch is not None:
        try:
            if torch.cuda.is_available():
                for i in range(torch.cuda.device_count()):
                    props = torch.cuda.get_device_properties(i)
                    found.append(Device("cuda", props.name, int(props.total_memory), i))
        except Exception as e:  # a broken driver must not stop a CPU provider
            log.warning("device.cuda_probe_failed", error=repr(e))
        try:
            mps = getattr(torch.backends, "mps", None)
            if mps is not None and mps.is_available():
                found.append(Device("mps", "Apple MPS", total_memory()))
        except Exception as e:
            log.warning("device.mps_probe_failed", error=repr(e))
    found.append(cpu_device())
    return found


def choose_device(preference: str, devices: list[Device], torch_present: bool) -> tuple[Device, str]:
    """Pick the device to compute on and say why.

    ``preference`` is ``auto`` (best available: CUDA, then MPS, then CPU) or a
    kind; an unavailable kind falls back to the CPU with the reason.
    """
    by_kind = {d.kind: d for d in reversed(devices)}  # first device of each kind wins
    if preference not in ("auto", *DEVICE_KINDS):
        raise ValueError(f"device {preference!r} is not one of auto, cuda, mps, cpu")
    if preference == "auto":
        for kind in DEVICE_KINDS:
            if kind in by_kind:
                reason = "best available" if kind != "cpu" else (
                    "no torch installed" if not torch_present else "torch sees no CUDA or MPS device")
                return by_kind[kind], reason
    if preference in by_kind:
        return by_kind[preference], "requested"
    why = "torch is not installed" if not torch_present else f"torch reports no {preference} device"
    return by_kind["cpu"], f"{preference} requested but {why}; falling back to CPU"


def measure_gflops(seconds: float = 0.05, n: int = 256) -> float:
    """This machine's float32 matmul speed through numpy's BLAS, GFLOP/s (sent at registration)."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a  # warm up BLAS
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9

"""Device probe and choice with fake torch modules: any mix of CUDA and MPS on any machine."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from common.provider.devices import Device, choose_device, cpu_device, probe_devices

GiB = 1024**3


def fake_torch(cuda: int = 0, mps: bool = False, cuda_raises: bool = False, mps_raises: bool = False,
               has_mps_backend: bool = True):
    """A stand-in for the torch module with ``cuda`` CUDA devices and optional MPS."""

    def is_available():
        if cuda_raises:
            raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")
        return cuda > 0

    def mps_available():
        if mps_raises:
            raise RuntimeError("MPS backend broke")
        return mps

    cuda_ns = SimpleNamespace(
        is_available=is_available,
        device_count=lambda: cuda,
        get_device_properties=lambda i: SimpleNamespace(name=f"NVIDIA RTX {4090 - i}", total_memory=(24 - i) * GiB),
    )
    mps_ns = SimpleNamespace(is_available=mps_available)
    backends = SimpleNamespace(mps=mps_ns) if has_mps_backend else SimpleNamespace()
    return SimpleNamespace(cuda=cuda_ns, backends=backends)


def kinds(devices) -> list[str]:
    return [d.kind for d in devices]


# -- probe --------------------------------------------------------------------------


def test_probe_without_torch_finds_only_the_cpu():
    devices = probe_devices(None)
    assert kinds(devices) == ["cpu"]
    assert devices[0] == cpu_device()


def test_probe_lists_every_cuda_device_then_the_cpu():
    devices = probe_devices(fake_torch(cuda=2))
    assert kinds(devices) == ["cuda", "cuda", "cpu"]
    assert devices[0] == Device("cuda", "NVIDIA RTX 4090", 24 * GiB, 0)
    assert devices[1] == Device("cuda", "NVIDIA RTX 4089", 23 * GiB, 1)
    assert [d.torch_name for d in devices] == ["cuda:0", "cuda:1", "cpu"]


def test_probe_finds_mps():
    devices = probe_devices(fake_torch(mps=True))
    assert kinds(devices) == ["mps", "cpu"]
    assert devices[0].name == "Apple MPS" and devices[0].torch_name == "mps"


def test_probe_with_neither():
    assert kinds(probe_devices(fake_torch())) == ["cpu"]


def test_probe_survives_a_broken_cuda_driver():
    assert kinds(probe_devices(fake_torch(cuda=2, cuda_raises=True))) == ["cpu"]
    assert kinds(probe_devices(fake_torch(cuda=1, cuda_raises=True, mps=True))) == ["mps", "cpu"]


def test_probe_survives_a_broken_or_missing_mps_backend():
    assert kinds(probe_devices(fake_torch(cuda=1, mps=True, mps_raises=True))) == ["cuda", "cpu"]
    assert kinds(probe_devices(fake_torch(has_mps_backend=False))) == ["cpu"]


def test_cpu_device_describes_the_machine():
    cpu = cpu_device()
    assert cpu.kind == "cpu" and cpu.torch_name == "cpu"
    assert f"({os.cpu_count() or 1} cores)" in cpu.name
    assert cpu.memory_bytes > 0
    assert cpu.as_dict() == {"kind": "cpu", "name": cpu.name, "memory_bytes": cpu.memory_bytes, "index": 0}


# -- choice -------------------------------------------------------------------------


@pytest.mark.parametrize(("torch", "preference", "want_kind", "want_reason"), [
    # CUDA machine with two GPUs
    (fake_torch(cuda=2), "auto", "cuda", "best available"),
    (fake_torch(cuda=2), "cuda", "cuda", "requested"),
    (fake_torch(cuda=2), "cpu", "cpu", "requested"),
    (fake_torch(cuda=2), "mps", "cpu", "mps requested but torch reports no mps device; falling back to CPU"),
    # Apple silicon
    (fake_torch(mps=True), "auto", "mps", "best available"),
    (fake_torch(mps=True), "mps", "mps", "requested"),
    (fake_torch(mps=True), "cuda", "cpu", "cuda requested but torch reports no cuda device; falling back to CPU"),
    # both: CUDA wins on auto
    (fake_torch(cuda=1, mps=True), "auto", "cuda", "best available"),
    (fake_torch(cuda=1, mps=True), "mps", "mps", "requested"),
    # torch without accelerators
    (fake_torch(), "auto", "cpu", "torch sees no CUDA or MPS device"),
    (fake_torch(), "cuda", "cpu", "cuda requested but torch reports no cuda device; falling back to CPU"),
    (fake_torch(), "cpu", "cpu", "requested"),
    # a broken CUDA driver looks like no CUDA
    (fake_torch(cuda=2, cuda_raises=True), "auto", "cpu", "torch sees no CUDA or MPS device"),
    (fake_torch(cuda=2, cuda_raises=True), "cuda", "cpu",
     "cuda requested but torch reports no cuda device; falling back to CPU"),
    # no torch at all
    (None, "auto", "cpu", "no torch installed"),
    (None, "cpu", "cpu", "requested"),
    (None, "cuda", "cpu", "cuda requested but torch is not installed; falling back to CPU"),
    (None, "mps", "cpu", "mps requested but torch is not installed; falling back to CPU"),
])
def test_choose_device(torch, preference, want_kind, want_reason):
    device, reason = choose_device(preference, probe_devices(torch), torch_present=torch is not None)
    assert device.kind == want_kind
    assert reason == want_reason


def test_fallback_reasons_mention_cpu():
    for torch in (None, fake_torch(), fake_torch(mps=True)):
        _, reason = choose_device("cuda", probe_devices(torch), torch_present=torch is not None)
        assert "CPU" in reason and "cuda" in reason


def test_first_device_of_a_kind_is_chosen():
    device, _ = choose_device("cuda", probe_devices(fake_torch(cuda=3)), torch_present=True)
    assert device.index == 0 and device.torch_name == "cuda:0"
    device, _ = choose_device("auto", probe_devices(fake_torch(cuda=3)), torch_present=True)
    assert device.torch_name == "cuda:0"


@pytest.mark.parametrize("preference", ["gpu", "tpu", "", "CUDA", "cuda:1"])
def test_unknown_preference_is_refused(preference):
    with pytest.raises(ValueError, match="is not one of auto, cuda, mps, cpu"):
        choose_device(preference, probe_devices(None), torch_present=False)

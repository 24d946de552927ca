"""Models, optimizers and parameter transport for the ``train`` task type.

Model specs: ``mlp:IN,H1,...,OUT`` (ReLU between layers), ``cnn:HxW,CLASSES``
(a small CNN for 1-channel images), or ``package.module:factory`` for a
model defined in a package installed on the head and the providers (called
with no arguments; nothing is pickled over the wire).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import numpy as np

from common.errors import ValidationError

WIRE_DTYPES = ("float32", "float16", "bfloat16")
OPTIMIZERS = ("sgd", "adam")
_MLP = re.compile(r"^mlp:(\d+(?:,\d+)+)$")
_CNN = re.compile(r"^cnn:(\d+)x(\d+),(\d+)$")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def require_torch(where: str):
    try:
        import torch
    except ImportError:
        raise ValidationError(f"training needs PyTorch on the {where}: install it there with `pip install torch` "
                              "(see README: PyTorch on providers)") from None
    return torch


def check_spec(spec: Any) -> str:
    if not isinstance(spec, str) or not (_MLP.match(spec) or _CNN.match(spec) or _FACTORY.match(spec)):
        raise ValidationError(f"model {spec!r} is not mlp:IN,HIDDEN...,OUT, cnn:HxW,CLASSES or package.module:factory")
    return spec


class _Cnn:
    """Built lazily so importing this module does not need torch."""

    @staticmethod
    def build(torch, h: int, w: int, classes: int):
        nn = torch.nn

        class SmallCnn(nn.Module):
            def __init__(self):
                super().__init__()
                self.h, self.w = h, w
                self.features = nn.Sequential(
                    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
                self.head = nn.Linear(32 * 4, classes)

            def forward(self, x):
                return self.head(self.features(x.reshape(-1, 1, self.h, self.w)))

        return SmallCnn()


def build_model(spec: str, seed: int | None = None):
    """The model for ``spec``, with parameters initialized from ``seed`` when given."""
    torch = require_torch("head and providers")
    if seed is not None:
        torch.manual_seed(seed)
    if m := _MLP.match(spec):
        sizes = [int(v) for v in m[1].split(",")]
        layers: list = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            layers.append(torch.nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        return torch.nn.Sequential(*layers)
    if m := _CNN.match(spec):
        return _Cnn.build(torch, int(m[1]), int(m[2]), int(m[3]))
    module_name, _, factory = spec.partition(":")
    try:
        model = getattr(importlib.import_module(module_name), factory)()
    except Exception as e:  # the user's own code: report what went wrong, do not crash
        raise ValidationError(f"model factory {spec!r} failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise ValidationError(f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float):
    torch = require_torch("head")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def to_wire(arr: np.ndarray, wire_dtype: str) -> np.ndarray:
    """float32 parameters or gradients as they travel: float32, float16, or bfloat16 bits in uint16."""
    if wire_dtype == "float16":
        return arr.astype(np.float16)
    if wire_dtype == "bfloat16":
        bits = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
        rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))  # round to nearest even
        return (rounded >> np.uint32(16)).astype(np.uint16)
    return np.ascontiguousarray(arr, dtype=np.float32)


def from_wire(arr: np.ndarray, wire_dtype: str) -> np.ndarray:
    if wire_dtype == "bfloat16":
        return (arr.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return arr.astype(np.float32, copy=False)


def get_params(model) -> list[np.ndarray]:
    return [p.detach().cpu().numpy().astype(np.float32, copy=True) for p in model.parameters()]


def set_params(model, arrays: list[np.ndarray]) -> None:
    torch = require_torch("provider")
    with torch.no_grad():
        for p, arr in zip(model.parameters(), arrays):
            p.copy_(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).reshape(p.shape))

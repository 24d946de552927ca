"""Models, optimizers and parameter transport for the ``train`` task type.

Model specs: ``mlp:IN,H1,...,OUT`` (ReLU between layers), ``cnn:HxW,CLASSES``
(a small CNN for 1-channel images), or ``package.module:factory`` for a
model defined in a package installed on the head and the providers (called
with no arguments; nothing is pickled over the wire).

The head builds the model a client names, so a client must not be able to make it
call any function it can import (``os:abort`` would stop it): a factory is taken
only if the head's operator allowed it, with ``head-node start --allow-model`` or
an entry point in the ``zcompute.models`` group of an installed package. And the
built-in specs are bounded (``MAX_PARAMETERS``): the head holds the parameters,
their gradients and the optimizer's state.
"""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points
from typing import Any, Iterable

import numpy as np

from common.errors import ConfigError, ValidationError

WIRE_DTYPES = ("float32", "float16", "bfloat16")
OPTIMIZERS = ("sgd", "adam")
_MLP = re.compile(r"^mlp:(\d{1,9}(?:,\d{1,9})+)$")
_CNN = re.compile(r"^cnn:(\d{1,9})x(\d{1,9}),(\d{1,9})$")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
MODEL_ENTRY_POINTS = "zcompute.models"
#: parameters of a built-in model a client may ask for (an mlp or cnn): 200 MB of float32, four times over
#: with its gradients and Adam's two moments
MAX_PARAMETERS = 50_000_000
MAX_IMAGE_SIDE = 4096
_allowed: set[str] = set()  # factories the operator allowed (allow_factories); entry points are read as asked


def require_torch(where: str):
    try:
        import torch
    except ImportError:
        raise ValidationError(f"training needs PyTorch on the {where}: install it there with `pip install torch` "
                              "(see README: PyTorch on providers)") from None
    return torch


def allow_factories(specs: Iterable[str]) -> None:
    """The ``package.module:factory`` models this process may build for a client (the head's
    ``--allow-model``), besides those installed packages declare as ``zcompute.models`` entry points."""
    specs = list(specs)
    bad = [s for s in specs if not _FACTORY.match(s)]
    if bad:
        raise ConfigError(f"--allow-model takes package.module:factory, not {', '.join(map(repr, bad))}")
    _allowed.clear()
    _allowed.update(specs)


def allowed_factories() -> set[str]:
    return _allowed | {ep.value for ep in entry_points(group=MODEL_ENTRY_POINTS)}


def check_spec(spec: Any) -> str:
    """``spec`` if a client may ask for it here: a well-formed built-in of bounded size, or an allowed factory."""
    text = spec if isinstance(spec, str) else ""  # (anything else matches no form)
    if m := _MLP.match(text):
        _check_mlp([int(v) for v in m[1].split(",")])
    elif m := _CNN.match(text):
        h, w, classes = int(m[1]), int(m[2]), int(m[3])
        if not (1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE and 1 <= classes):
            raise ValidationError(f"model {spec}: image sides must be 1..{MAX_IMAGE_SIDE} and classes at least 1")
        _check_count(spec, 16 * 9 + 16 + 32 * 16 * 9 + 32 + 128 * classes + classes)
    elif _FACTORY.match(text):
        if spec not in allowed_factories():
            raise ValidationError(
                f"model factory {spec!r} is not allowed on this head (its operator allows factories with "
                f"`head-node start --allow-model MODULE:FACTORY` or {MODEL_ENTRY_POINTS!r} entry points)")
    else:
        raise ValidationError(f"model {spec!r} is not mlp:IN,HIDDEN...,OUT, cnn:HxW,CLASSES or package.module:factory")
    return spec


def _check_mlp(sizes: list[int]) -> None:
    if min(sizes) < 1:
        raise ValidationError(f"model mlp:{','.join(map(str, sizes))}: every layer needs at least 1 unit")
    _check_count(f"mlp:{','.join(map(str, sizes))}", sum(a * b + b for a, b in zip(sizes, sizes[1:])))


def _check_count(spec: str, parameters: int) -> None:
    if parameters > MAX_PARAMETERS:
        raise ValidationError(f"model {spec} has {parameters:,} parameters, over the limit of {MAX_PARAMETERS:,}")


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

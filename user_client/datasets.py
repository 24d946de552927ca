"""Training data for ``user-client train --data`` and ``Client.train(data=...)``.

``digits`` (the 8x8 handwritten digits scikit-learn ships, no download),
``PATH.npz`` with arrays ``X`` and ``y``, or MNIST IDX files: a directory
holding ``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``,
or ``IMAGES_FILE,LABELS_FILE``.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from common.errors import ValidationError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise ValidationError("the digits data set comes with scikit-learn: pip install scikit-learn") from None
    data = sk_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValidationError(f"{path} is not an IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)) * dtype.itemsize:
        raise ValidationError(f"{path}: header says {dims} of {dtype}, file has {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def load_mnist(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images), read_idx(labels)
    if len(x) != len(y):
        raise ValidationError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    return (x.reshape(len(x), -1) / 255.0).astype(np.float32), y.astype(np.int64)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).exists():
            return directory / name
    raise ValidationError(f"{directory} has no {stem}[.gz]")


def load_dataset(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """``digits``, ``PATH.npz``, an MNIST directory, or ``IMAGES,LABELS`` IDX files."""
    if spec == "digits":
        return load_digits()
    if "," in spec:
        images, labels = (Path(p).expanduser() for p in spec.split(",", 1))
        return load_mnist(images, labels)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_mnist(_find(path, "train-images-idx3-ubyte"), _find(path, "train-labels-idx1-ubyte"))
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return np.asarray(data["X"]), np.asarray(data["y"])
        except KeyError:
            raise ValidationError(f"{path} must hold arrays named X and y") from None
        except (OSError, ValueError) as e:
            raise ValidationError(f"cannot read {path}: {e}") from None
    raise ValidationError(f"data {spec!r} is not 'digits', a .npz file, an MNIST directory or IMAGES,LABELS")

"""Training data loaders: MNIST IDX files (plain and gzipped), .npz, and their errors."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from common.errors import ValidationError
from user_client.datasets import load_dataset, read_idx


def write_idx(path, arr: np.ndarray, gz: bool = False) -> None:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[arr.dtype]
    body = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    body += arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(body)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_directory_loads_scaled_images_and_labels(tmp_path, gz):
    images = np.arange(3 * 28 * 28, dtype=np.int32).reshape(3, 28, 28) % 256
    labels = np.array([7, 2, 1], np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images.astype(np.uint8), gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    x, y = load_dataset(str(tmp_path))
    assert x.shape == (3, 784) and x.dtype == np.float32 and float(x.max()) == 1.0
    np.testing.assert_array_equal(y, [7, 2, 1])
    x2, y2 = load_dataset(f"{tmp_path}/train-images-idx3-ubyte{suffix},{tmp_path}/train-labels-idx1-ubyte{suffix}")
    np.testing.assert_array_equal(x2, x)


def test_idx_big_endian_integers_are_read(tmp_path):
    arr = np.array([[1, -2], [300000, 4]], np.int32)
    write_idx(tmp_path / "a.idx", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), arr)


def test_idx_errors_are_clear(tmp_path):
    (tmp_path / "bad").write_bytes(b"nope")
    with pytest.raises(ValidationError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 4), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(ValidationError, match="header says"):
        read_idx(tmp_path / "short")
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 2, 2), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(ValidationError, match="2 images but"):
        load_dataset(str(tmp_path))


def test_npz_and_unknown_data(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((4, 2)), y=np.arange(4))
    x, y = load_dataset(str(tmp_path / "d.npz"))
    assert x.shape == (4, 2) and y.tolist() == [0, 1, 2, 3]
    np.savez(tmp_path / "e.npz", a=np.ones(2))
    with pytest.raises(ValidationError, match="X and y"):
        load_dataset(str(tmp_path / "e.npz"))
    with pytest.raises(ValidationError, match="is not 'digits'"):
        load_dataset(str(tmp_path / "nothing.csv"))

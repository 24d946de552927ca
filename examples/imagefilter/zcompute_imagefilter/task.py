"""``imagefilter``: 2-D convolution of an image with a small kernel, in tiles on the providers.

The head pads the whole image once (numpy's ``np.pad`` edge ``mode``), cuts it
into a ``rows x cols`` grid of tiles, and sends each tile with a halo of
``kernel_size // 2`` pixels on every side, so a provider needs nothing from its
neighbours. Each provider convolves its tile; the head writes the tile's
result into its place in the output (idempotent: a replayed merge writes the
same pixels). The result equals ``convolve(image, kernel, mode)`` on one machine.

Arrays: ``image`` (H, W) or (H, W, channels), ``kernel`` (kh, kw) with odd
sides. Params: ``tiles`` ``[rows, cols]`` (default ``[2, 2]``), ``mode``
(``reflect``, ``symmetric``, ``edge``, ``wrap`` or ``constant``, which pads with 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.errors import ValidationError
from common.tasks.base import JobView, Shard, TaskType

EDGE_MODES = ("reflect", "symmetric", "edge", "wrap", "constant")
MAX_KERNEL = 63


def bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering ``0..n``, the first ``n % parts`` one longer."""
    size, extra = divmod(n, parts)
    starts = [b * size + min(b, extra) for b in range(parts + 1)]
    return list(zip(starts[:-1], starts[1:]))


def pad(image: np.ndarray, kernel_shape: tuple[int, int], mode: str) -> np.ndarray:
    hy, hx = kernel_shape[0] // 2, kernel_shape[1] // 2
    widths = [(hy, hy), (hx, hx)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, widths, mode=mode)


def convolve_padded(tile: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolution of a tile that carries its halo: the output is the tile less the halo."""
    kh, kw = kernel.shape
    h, w = tile.shape[0] - kh + 1, tile.shape[1] - kw + 1
    out = np.zeros((h, w) + tile.shape[2:], np.float64)
    flipped = kernel[::-1, ::-1]  # convolution, not correlation
    for i in range(kh):
        for j in range(kw):
            out += flipped[i, j] * tile[i:i + h, j:j + w]
    return out


def convolve(image: np.ndarray, kernel: np.ndarray, mode: str = "reflect") -> np.ndarray:
    """The whole image on one machine: what the cluster's result equals."""
    return convolve_padded(pad(np.asarray(image, np.float64), kernel.shape, mode), np.asarray(kernel, np.float64))


class ImageFilterTask(TaskType):
    name = "imagefilter"

    def validate(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        image, kernel = arrays.get("image"), arrays.get("kernel")
        if image is None or kernel is None or set(arrays) != {"image", "kernel"}:
            raise ValidationError("imagefilter takes exactly two arrays, 'image' and 'kernel'")
        if image.ndim not in (2, 3) or image.dtype.kind not in "buif" or 0 in image.shape:
            raise ValidationError(f"imagefilter: image must be (H, W) or (H, W, channels) real numbers, "
                                  f"got {image.dtype} {image.shape}")
        if (kernel.ndim != 2 or kernel.dtype.kind not in "iuf" or any(k % 2 == 0 or k > MAX_KERNEL
                                                                       for k in kernel.shape)):
            raise ValidationError(f"imagefilter: kernel must be 2-D real with odd sides up to {MAX_KERNEL}, "
                                  f"got {kernel.dtype} {kernel.shape}")
        mode = params.get("mode", "reflect")
        if mode not in EDGE_MODES:
            raise ValidationError(f"imagefilter: mode must be one of {', '.join(EDGE_MODES)}, got {mode!r}")
        if mode in ("reflect", "wrap") and any(k // 2 >= n for k, n in zip(kernel.shape, image.shape)):
            raise ValidationError(f"imagefilter: a {kernel.shape} kernel is too large for mode {mode!r} on an "
                                  f"image of {image.shape[:2]}")
        tiles = params.get("tiles", [2, 2])
        if (not isinstance(tiles, (list, tuple)) or len(tiles) != 2
                or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in tiles)):
            raise ValidationError(f"imagefilter: tiles must be [rows, cols] of positive integers, got {tiles!r}")
        if tiles[0] > image.shape[0] or tiles[1] > image.shape[1]:
            raise ValidationError(f"imagefilter: {tiles[0]}x{tiles[1]} tiles on a {image.shape[0]}x"
                                  f"{image.shape[1]} image leaves some empty")
        unknown = set(params) - {"mode", "tiles"}
        if unknown:
            raise ValidationError(f"imagefilter: unknown parameters {sorted(unknown)}")
        return {"mode": mode, "tiles": list(tiles)}

    def plan(self, job: JobView) -> list[Shard]:
        image, kernel = job.input("image"), job.input("kernel")
        padded = pad(image, kernel.shape, job.params["mode"])
        job.allocate("padded", padded.shape, np.float64)[...] = padded
        job.allocate("image", image.shape, np.float64)
        rows, cols = (bounds(n, t) for n, t in zip(image.shape[:2], job.params["tiles"]))
        return [Shard(i * len(cols) + j, {"rows": list(r), "cols": list(c)})
                for i, r in enumerate(rows) for j, c in enumerate(cols)]

    def inputs(self, job: JobView, shard: Shard) -> dict[str, np.ndarray]:
        (r0, r1), (c0, c1) = shard.params["rows"], shard.params["cols"]
        kernel = job.input("kernel")
        kh, kw = kernel.shape
        return {"tile": job.output("padded")[r0:r1 + kh - 1, c0:c1 + kw - 1], "kernel": kernel}

    def cache_keys(self, job: JobView, shard: Shard) -> dict[str, str]:
        return {"kernel": f"{job.job_id}/kernel"}  # every tile uses the same kernel: send it once

    def compute(self, params: dict[str, Any], arrays: dict[str, np.ndarray], device: str) -> dict[str, np.ndarray]:
        return {"tile": convolve_padded(arrays["tile"], np.asarray(arrays["kernel"], np.float64))}

    def merge(self, job: JobView, shard: Shard, result: dict[str, np.ndarray]) -> None:
        (r0, r1), (c0, c1) = shard.params["rows"], shard.params["cols"]
        out = job.output("image")
        tile = result.get("tile")
        expected = (r1 - r0, c1 - c0) + out.shape[2:]
        if tile is None or tile.shape != expected:
            raise ValidationError(f"imagefilter tile {shard.index}: shape {getattr(tile, 'shape', None)}, "
                                  f"expected {expected}")
        out[r0:r1, c0:c1] = tile

    def outputs(self, job: JobView) -> dict[str, np.ndarray]:
        return {"image": job.output("image")}


def filter_image(client, image: np.ndarray, kernel: np.ndarray, tiles: tuple[int, int] = (2, 2),
                 mode: str = "reflect", priority: int = 0):
    """Submit through a ``user_client.Client``; ``.result()`` is the filtered float64 image."""
    return client.submit("imagefilter", {"tiles": list(tiles), "mode": mode},
                         {"image": np.asarray(image), "kernel": np.asarray(kernel)}, priority)

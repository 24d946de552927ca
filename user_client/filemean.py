"""Submit a ``filemean`` job: the element-wise mean of many files, reduced as a tree on the providers.

Inputs are expanded here with fsspec: a directory (its files, sorted), a glob
(``run7/*.npy``, ``s3://bucket/run7/*.npy``), a file or URL, or a list of them.
Local files are uploaded by default, since providers on other machines may not
see them; ``upload=False`` sends the paths/URLs for the providers to read.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterable, Literal, Union

import numpy as np

from common.errors import TaskError, ValidationError
from common.tasks.filemean import FileMeanTask, encode_names
from common.tasks.numberfiles import read_numbers

if TYPE_CHECKING:
    from user_client.client import Client, JobHandle

PathLike = Union[str, "os.PathLike[str]"]
_GLOB = set("*?[")


def _fs(url: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:  # an unknown protocol, or its backend (s3fs, gcsfs) not installed
        raise ValidationError(f"cannot open {url}: {e}") from None


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _expand_one(item: str) -> list[str]:
    fs, path = _fs(item)
    local = "file" in fs.protocol

    def name(p: str) -> str:
        return p if local else fs.unstrip_protocol(p)

    if _GLOB & set(path):
        found = fs.glob(path, detail=True)
        files = sorted(p for p, info in found.items() if info.get("type") == "file")
        if not files:
            raise ValidationError(f"no files match {item}")
        return [name(p) for p in files]
    try:
        is_dir = fs.isdir(path)
    except Exception:  # no listing rights on a remote store: take it as one file the providers can read
        is_dir = False
    if is_dir:
        entries = fs.ls(path, detail=True)
        files = sorted(e["name"] for e in entries
                       if e.get("type") == "file" and not os.path.basename(e["name"].rstrip("/")).startswith("."))
        if not files:
            raise ValidationError(f"directory {item} has no files")
        return [name(p) for p in files]
    if local and not fs.exists(path):
        raise ValidationError(f"no such file: {item}")
    return [name(path) if local else item]  # a URL stays as given


def expand_inputs(inputs: PathLike | Iterable[PathLike]) -> list[str]:
    """File paths/URLs in order: directories and globs expanded (sorted), local paths made absolute."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise ValidationError("filemean: no input given")
    urls: list[str] = []
    for item in items:
        urls.extend(_expand_one(os.fspath(item)))
    return urls


def upload_arrays(urls: list[str]) -> dict[str, np.ndarray]:
    """Read every file here and pack them as the head takes uploads: ``data``, ``lengths``, ``names``."""
    parts = []
    for url in urls:
        try:
            parts.append(read_numbers(url))
        except TaskError as e:
            raise ValidationError(str(e)) from None
    return {"data": np.concatenate(parts), "lengths": np.array([len(p) for p in parts], np.int64),
            "names": encode_names(urls)}


def submit_filemean(client: "Client", input: PathLike | Iterable[PathLike], fanin: int = 8,
                    intermediate: str | None = None, upload: bool | Literal["auto"] = "auto",
                    priority: int = 0) -> "JobHandle":
    """The element-wise mean of the files in ``input``; ``job.result()`` is a float64 array of C numbers.

    ``upload``: ``"auto"`` sends the contents when any input is a local file, ``True`` always (the
    client reads remote URLs too), ``False`` never (providers read the paths/URLs through fsspec).
    ``intermediate``: a URL prefix the providers can write (``s3://bucket/tmp``) for partial sums;
    by default they travel through the head.
    """
    if upload not in (True, False, "auto"):
        raise ValidationError(f"upload must be True, False or 'auto', got {upload!r}")
    urls = expand_inputs(input)
    if upload == "auto":
        upload = any(is_local(u) for u in urls)
    params = {"fanin": fanin, "intermediate": intermediate}
    if intermediate and "://" not in intermediate:
        params["intermediate"] = os.path.abspath(intermediate)  # relative to here, not to each provider
    arrays = upload_arrays(urls) if upload else {"urls": encode_names(urls)}
    FileMeanTask().validate(params, arrays)  # a mismatched file fails here, before the upload
    return client.submit("filemean", params, arrays, priority)

"""A provider's stable id, kept in its data dir across restarts."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

_ID = re.compile(r"^[0-9a-f]{32}$")


def provider_id(data_dir: Path) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "provider_id"
    if path.exists():
        text = path.read_text().strip()
        if _ID.match(text):
            return text
    new = uuid.uuid4().hex
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new + "\n")
    tmp.replace(path)
    return new

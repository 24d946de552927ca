"""Join strings and ``@FILE`` joins: whatever the text or file, a bad one is a ``ConfigError`` naming what is wrong."""

from __future__ import annotations

import base64
import dataclasses
import json

import numpy as np
import pytest

from common.errors import ConfigError
from common.security import JOIN_PREFIX, MAX_JOIN_FILE, Join

GOOD = Join(head="tcp://127.0.0.1:5555", server_key="s" * 40, public="p" * 40, secret="x" * 40, token="t",
            name="alice", role="client")


def encoded(data) -> str:
    return JOIN_PREFIX + base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def test_a_join_file_round_trips(tmp_path):
    (tmp_path / "alice.join").write_text(GOOD.encode() + "\n")
    assert Join.decode(f"@{tmp_path / 'alice.join'}") == GOOD


@pytest.mark.parametrize("make", [
    lambda path: np.save(path, np.ones(3)),  # binary: not UTF-8
    lambda path: path.write_bytes(b"\xff\xfe" * 10),
    lambda path: path.write_text(GOOD.encode() + " " * MAX_JOIN_FILE),  # a join, but in a file far too large
])
def test_a_file_that_holds_no_join_string_says_so(tmp_path, make):
    path = tmp_path / "A.npy"
    make(path)
    with pytest.raises(ConfigError, match=f"the file {path} does not hold a join string"):
        Join.decode(f"@{path}")


def test_an_unreadable_join_file_says_why(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the join file .*: No such file or directory"):
        Join.decode(f"@{tmp_path / 'missing'}")


@pytest.mark.parametrize("data", [[1, 2], {**dataclasses.asdict(GOOD), "head": 5}, {"head": "tcp://h"}, "text"])
def test_a_damaged_join_string_is_a_config_error(data):
    with pytest.raises(ConfigError, match="the join string is damaged"):
        Join.decode(encoded(data))

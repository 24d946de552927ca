"""Which models a client may ask the head to build (``common.tasks.torchmodels.check_spec``)."""

from __future__ import annotations

import sys

import pytest

from common.errors import ConfigError, ValidationError
from common.tasks import torchmodels


@pytest.fixture(autouse=True)
def no_factories_allowed():
    torchmodels.allow_factories([])
    yield
    torchmodels.allow_factories([])


@pytest.mark.parametrize("spec", ["mlp:64,32,10", "mlp:1,1", "cnn:8x8,10", "cnn:28x28,10"])
def test_bounded_built_in_models_are_taken(spec):
    assert torchmodels.check_spec(spec) == spec


@pytest.mark.parametrize("spec,message", [
    ("mlp:64,0,10", "at least 1 unit"),
    ("mlp:64,100000000,10", "over the limit of 50,000,000"),  # 25.6 GB the head would allocate
    ("mlp:" + ",".join(["3000"] * 8), "over the limit"),  # many layers that add up
    ("mlp:64,9999999999,10", "is not mlp"),  # numbers of 10 digits and more are not even parsed
    ("cnn:0x8,10", "image sides"),
    ("cnn:8x8,0", "classes at least 1"),
    ("cnn:8x8,400000", "over the limit"),
    ("os:abort", "not allowed on this head"),  # would stop the head
    ("os:system", "not allowed on this head"),
    ("builtins:exit", "not allowed on this head"),
    (None, "is not mlp"),
])
def test_what_a_client_may_not_make_the_head_build_or_call(spec, message):
    with pytest.raises(ValidationError, match=message):
        torchmodels.check_spec(spec)


def test_factories_the_operator_allowed_or_installed_as_entry_points(tmp_path, monkeypatch):
    torchmodels.allow_factories(["tests.train_factory:small_mlp"])
    assert torchmodels.check_spec("tests.train_factory:small_mlp") == "tests.train_factory:small_mlp"
    with pytest.raises(ValidationError, match="not allowed"):
        torchmodels.check_spec("tests.train_factory:other")
    with pytest.raises(ConfigError, match="takes package.module:factory"):
        torchmodels.allow_factories(["os.abort"])
    # an installed package that declares the factory in the zcompute.models group
    info = tmp_path / "mymodels-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mymodels\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[zcompute.models]\nsmall = mymodels.nets:small\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    assert torchmodels.check_spec("mymodels.nets:small") == "mymodels.nets:small"

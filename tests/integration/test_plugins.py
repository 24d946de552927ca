"""Task types from other packages: the imagefilter example end to end, malformed plugins, unsupported types.

Plugins are found through the ``zcompute.tasks`` entry-point group. The
malformed ones live in a throw-away ``*.dist-info`` on PYTHONPATH (importlib.metadata
reads entry points from any dist-info directory on sys.path): the head sees
them all, provider 0 only the broken ones, provider 1 none.
"""

from __future__ import annotations

import importlib.util
import json
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from numpy.lib.stride_tricks import sliding_window_view

from common.errors import ValidationError
from tests.conftest import FAST
from user_client import LocalCluster
from user_client.cli import cli

BROKEN = {  # entry point name -> (module source, object, what the head's log must say)
    "broken_import": ("import zcompute_no_such_module\n", "Task", "No module named 'zcompute_no_such_module'"),
    "missing_method": ("from common.tasks.base import TaskType\n\nclass Task(TaskType):\n"
                       "    name = 'missing_method'\n\n    def plan(self, job):\n        return []\n",
                       "Task", "abstract method"),
    "not_a_task": ("class Task:\n    name = 'not_a_task'\n", "Task", "is not a zcompute TaskType subclass"),
}
HEAD_ONLY = textwrap.dedent("""\
    from common.tasks.base import Shard, TaskType

    class Task(TaskType):
        name = "headonly"

        def plan(self, job):
            return [Shard(0)]

        def compute(self, params, arrays, device):
            return {}
""")


def make_plugin_dir(root, dist: str, modules: dict[str, tuple[str, str]]) -> str:
    """A directory with modules and a dist-info declaring them as ``zcompute.tasks`` entry points."""
    root.mkdir()
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = ["[zcompute.tasks]"]
    for name, (source, obj) in modules.items():
        (root / f"{dist}_{name}.py").write_text(source)
        lines.append(f"{name} = {dist}_{name}:{obj}")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return str(root)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugins")
    broken = make_plugin_dir(root / "broken", "zcbroken", {k: v[:2] for k, v in BROKEN.items()})
    head_only = make_plugin_dir(root / "headonly", "zcheadonly", {"headonly": (HEAD_ONLY, "Task")})
    cluster = LocalCluster(0, insecure=True, log_level="info", env={"PYTHONPATH": f"{broken}:{head_only}"}, **FAST)
    cluster.start()
    try:
        cluster.add_provider(env={"PYTHONPATH": broken})
        cluster.add_provider(env={"PYTHONPATH": ""})
        cluster.wait_for_providers(2)
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


def log_events(cluster, name: str, event: str) -> list[dict]:
    text = (cluster.data_dir / "logs" / f"{name}.log").read_text()
    return [json.loads(line) for line in text.splitlines() if f'"{event}"' in line]


def reference_convolution(image: np.ndarray, kernel: np.ndarray, mode: str) -> np.ndarray:
    """Written apart from the plugin: windows of the padded image against the flipped kernel."""
    kh, kw = kernel.shape
    widths = [(kh // 2, kh // 2), (kw // 2, kw // 2)] + [(0, 0)] * (image.ndim - 2)
    windows = sliding_window_view(np.pad(image.astype(np.float64), widths, mode=mode), (kh, kw), axis=(0, 1))
    return np.einsum("...ij,ij->...", windows, kernel[::-1, ::-1])


def test_the_imagefilter_example_runs_end_to_end(cluster):
    if importlib.util.find_spec("zcompute_imagefilter") is None:
        pytest.fail("the example plugin is not installed: pip install -e examples/imagefilter (the Makefile does)")
    from zcompute_imagefilter import convolve, filter_image

    rng = np.random.default_rng(11)
    cases = [
        (rng.random((97, 131)), rng.standard_normal((5, 5)), (3, 4), "reflect"),
        (rng.random((64, 48, 3)), np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], float), (2, 2), "edge"),
        ((rng.random((40, 40)) * 255).astype(np.uint8), np.ones((3, 7)) / 21, (5, 1), "wrap"),
        (rng.random((30, 20)), rng.standard_normal((3, 3)), (1, 3), "constant"),
    ]
    with cluster.client() as c:
        assert all("imagefilter" in p["task_types"] for p in c.providers())
        for image, kernel, tiles, mode in cases:
            job = filter_image(c, image, kernel, tiles=tiles, mode=mode)
            out = job.result(timeout=60)
            expected = reference_convolution(image, kernel, mode)
            np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(convolve(image, kernel, mode), expected, rtol=1e-12, atol=1e-12)
            assert job.status()["total"] == tiles[0] * tiles[1]
        with pytest.raises(ValidationError, match="kernel must be 2-D real with odd sides"):
            filter_image(c, cases[0][0], np.ones((4, 4)))


def test_malformed_plugins_are_logged_and_skipped(cluster):
    for process in ("head", "provider-0"):
        failed = {e["task_type"]: e["error"] for e in log_events(cluster, process, "task_type.load_failed")}
        for name, (_, _, message) in BROKEN.items():
            assert message in failed.get(name, ""), (process, name, failed)
    listening = log_events(cluster, "head", "head.listening")[-1]
    assert {"filemean", "matmul", "headonly"} <= set(listening["task_types"])
    assert not set(BROKEN) & set(listening["task_types"])
    result = CliRunner().invoke(cli, ["--head", str(cluster.address), "--insecure", "providers"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("local-")]
    assert len(rows) == 2 and all("filemean" in row and "imagefilter" in row for row in rows), result.output
    assert not any(name in result.output for name in BROKEN)
    with cluster.client() as c:
        with pytest.raises(ValidationError, match="unknown task type 'missing_method'"):
            c.submit("missing_method")
        assert c.submit("noop", {"shards": 3}).wait(timeout=30)["status"] == "succeeded"


def test_a_type_no_ready_provider_supports_is_refused_by_name(cluster):
    with cluster.client() as c:
        assert not any("headonly" in p["task_types"] for p in c.providers())
        with pytest.raises(ValidationError, match="no ready provider supports task type 'headonly'"):
            c.submit("headonly")

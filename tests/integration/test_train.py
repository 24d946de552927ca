"""Distributed training on the digits data set through real head and provider processes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training tests need torch (make test installs torch==2.13.0)")

from common.tasks.torchmodels import build_model  # noqa: E402
from tests.conftest import FAST  # noqa: E402
from tests.helpers import wait_until  # noqa: E402
from tests.train_reference import train_single_process  # noqa: E402
from user_client import LocalCluster, ValidationError  # noqa: E402
from user_client.datasets import load_digits  # noqa: E402

MODEL = "mlp:64,128,10"
OWN_MODEL = "tests.train_factory:small_mlp"  # a user's own model, which the head's operator allows
RECIPE = {"epochs": 20, "batch_size": 64, "lr": 0.1, "momentum": 0.9, "seed": 0}


@pytest.fixture(scope="module")
def shared_cluster():
    """This module's 2-provider cluster; its head allows the suite's own model factory."""
    cluster = LocalCluster(2, insecure=True, log_level="info", head_args=["--allow-model", OWN_MODEL], **FAST).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def reference_accuracy(digits):
    return train_single_process(*digits, MODEL, **RECIPE)


def final_accuracy(job) -> float:
    return job.metrics()[-1]["test_acc"]


def test_two_providers_match_single_process_training(make_cluster, digits, reference_accuracy):
    cluster = make_cluster(2)
    with cluster.client() as c:
        job = c.train(MODEL, digits, **RECIPE)
        job.wait(timeout=180)
        history = job.metrics()
        state = job.result()
        summary = job.status()
    accuracy = history[-1]["test_acc"]
    assert accuracy >= 0.90
    assert abs(accuracy - reference_accuracy) <= 0.01, (accuracy, reference_accuracy)
    assert [h["step"] for h in history] == list(range(1, len(history) + 1))
    assert len(history) == 20 * 23 and all(h["shards"] == 2 for h in history)
    assert set(summary["shards_by_provider"]) == {"local-0", "local-1"}
    # the state_dict loads into the same model built locally and gives the same accuracy
    model = build_model(MODEL)
    model.load_state_dict(state)
    x, y = digits
    with torch.no_grad():
        assert (model(torch.from_numpy(x)).argmax(1).numpy() == y).mean() > 0.9
    print(f"\nFIGURE train digits: zcompute 2 providers {accuracy:.4f}, single process {reference_accuracy:.4f}")


def test_provider_killed_mid_training_still_converges(make_cluster, digits):
    recipe = {**RECIPE, "epochs": 10}
    reference = train_single_process(*digits, MODEL, **recipe)
    cluster = make_cluster(3)
    with cluster.client() as c:
        job = c.train(MODEL, digits, round_timeout=1.0, min_shards=0.5, **recipe)
        wait_until(lambda: job.status()["progress_done"] >= 60, timeout=60)
        cluster.providers[0].kill()
        job.wait(timeout=180)
        history = job.metrics()
    assert abs(history[-1]["test_acc"] - reference) <= 0.01, (history[-1]["test_acc"], reference)
    assert [h["step"] for h in history] == list(range(1, 10 * 23 + 1))  # no round lost, none run twice


def test_head_restart_resumes_from_the_last_round(make_cluster, digits):
    # speculative copies of slow shards (a busy CI machine) are extra computations that have nothing to do with
    # the restart: turn them off so the count below measures only what the restart redid
    cluster = make_cluster(2, head_args=["--no-speculate"])
    with cluster.client(timeout=2, retries=1) as c:
        clean = c.train(MODEL, digits, **{**RECIPE, "epochs": 6})
        clean.wait(timeout=120)
        # heartbeats report counts a little late: wait for all of the clean run's shards
        computed_before = wait_until(lambda: (n := sum(p["computed"] for p in c.providers())) >= 6 * 23 * 2 and n,
                                     timeout=5)
        job = c.train(MODEL, digits, **{**RECIPE, "epochs": 6})
        wait_until(lambda: job.status()["progress_done"] >= 50, timeout=60)
        cluster.kill_head()
        cluster.start_head()
        job.wait(timeout=120)
        history = job.metrics()
        state = job.result()
        wait_until(lambda: sum(p["computed"] for p in c.providers()) >= computed_before + 6 * 23 * 2, timeout=10)
        computed = sum(p["computed"] for p in c.providers()) - computed_before
        reference = clean.result()
    assert [h["step"] for h in history] == list(range(1, 6 * 23 + 1))  # every round once, none redone
    # finished rounds are never redone; the shards of the round in flight at the kill may run again on the
    # other provider (their late results are fenced), at most the last two rounds' worth
    assert computed <= 6 * 23 * 2 + 4, computed
    for name, tensor in reference.items():  # training is deterministic: the restart changed nothing
        assert torch.equal(state[name], tensor), name


@pytest.mark.parametrize("options", [{"wire_dtype": "float16"}, {"wire_dtype": "bfloat16"}, {"local_steps": 4},
                                     {"optimizer": "adam", "lr": 0.01, "momentum": 0.0}])
def test_training_options(shared_cluster, digits, options):
    with shared_cluster.client() as c:
        job = c.train(MODEL, digits, **{**RECIPE, "epochs": 5, **options})
        job.wait(timeout=120)
        assert final_accuracy(job) >= 0.85, job.metrics()[-1]


def test_small_cnn_trains(shared_cluster, digits):
    with shared_cluster.client() as c:
        job = c.train("cnn:8x8,10", digits, epochs=5, batch_size=64, lr=0.1, momentum=0.9)
        job.wait(timeout=120)
        assert final_accuracy(job) >= 0.8


@pytest.mark.parametrize("params,message", [
    ({"model": "resnet9000"}, "is not mlp"),
    ({"model": "mlp:10,5"}, "does not accept x"),
    ({"model": "mlp:64,5"}, "labels must lie in 0..4"),
    ({"model": "mlp:64,10", "optimizer": "lbfgs"}, "optimizer must be one of"),
    ({"model": "mlp:64,10", "epochs": 0}, "epochs must be"),
    ({"model": "no_such_pkg.models:make"}, "model factory"),
    ({"model": "os:abort"}, "is not allowed on this head"),  # the head would call it, and stop
    ({"model": "mlp:64,100000000,10"}, "over the limit"),  # 25.6 GB for the head to allocate
    ({"model": "mlp:64,0,10"}, "at least 1 unit"),
    ({"model": "mlp:64,10", "learning_rate": 1}, "unknown parameters"),
])
def test_bad_training_requests_are_refused(shared_cluster, digits, params, message):
    x, y = digits
    with shared_cluster.client() as c:
        before = c.jobs()
        with pytest.raises(ValidationError, match=message):
            c.submit("train", params, {"x": x, "y": y})
        assert c.jobs() == before  # and the head is still there to say so


@pytest.fixture
def no_torch_path(tmp_path):
    """A PYTHONPATH entry that hides torch from every import, as on a machine without it."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(\"No module named 'torch'\", name=name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _NoTorch())\n")
    return str(tmp_path)


def test_without_torch_training_is_refused_clearly_and_matmul_works(make_cluster, digits, no_torch_path):
    env = {"PYTHONPATH": no_torch_path}
    cluster = make_cluster(1, env=env)  # head and provider both without torch
    x, y = digits
    with cluster.client() as c:
        assert "train" not in c.providers()[0]["task_types"]
        with pytest.raises(ValidationError, match="pip install torch"):
            c.submit("train", {"model": MODEL}, {"x": x, "y": y})
        a = np.arange(12.0).reshape(3, 4)
        np.testing.assert_allclose(c.matmul(a, a.T, splits=(3, 1)).result(timeout=30), a @ a.T)


def test_provider_without_torch_does_not_get_training(make_cluster, digits, no_torch_path):
    cluster = make_cluster(0)
    cluster.add_provider(env={"PYTHONPATH": no_torch_path})
    cluster.wait_for_providers(1)
    x, y = digits
    with cluster.client() as c:
        with pytest.raises(ValidationError, match="no ready provider supports task type 'train'"):
            c.submit("train", {"model": MODEL}, {"x": x, "y": y})


def test_cli_train_prints_rounds_and_saves_a_loadable_state_dict(shared_cluster, tmp_path):
    out = subprocess.run([sys.executable, "-m", "user_client", "--insecure", "--head", str(shared_cluster.address),
                          "train", "--model", MODEL, "--data", "digits", "--epochs", "3", "--batch-size", "64",
                          "--lr", "0.1", "--momentum", "0.9", "--wait", "--out", str(tmp_path / "model.pt")],
                         capture_output=True, text=True, timeout=120, env={**os.environ}, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("round")]
    assert len(lines) == 3 and all("loss" in line and "test_acc" in line for line in lines)
    model = build_model(MODEL)
    model.load_state_dict(torch.load(tmp_path / "model.pt"))


def test_a_model_from_the_users_own_package(shared_cluster, digits):
    with shared_cluster.client() as c:
        job = c.train(OWN_MODEL, digits, epochs=5, batch_size=64, lr=0.1, momentum=0.9)
        job.wait(timeout=120)
        state = job.result()
        assert final_accuracy(job) >= 0.85
    assert state["0.weight"].shape == (32, 64)

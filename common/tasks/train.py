"""``train``: synchronous data-parallel training of a torch model.

The head splits the training set into data shards (one per ready slot by
default). Each round it sends the current parameters with one shard
assignment per data shard; a provider (which keeps its data shard after the
first round) computes the gradient of its part of the global batch, or the
weight change after ``local_steps`` local SGD steps, and returns it with its
sample count. The head averages weighted by samples, steps the optimizer,
checkpoints parameters and optimizer state in its data dir, and evaluates
on the held-out set at the end of every epoch. A round closes without a
straggler once ``round_timeout`` passed and ``min_shards`` of it are in; the
missing data shard goes to whoever is free next round.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from common.errors import ValidationError
from common.tasks.base import JobView, Shard, TaskType, check_params
from common.tasks.matmul import block_bounds
from common.tasks.torchmodels import (
    OPTIMIZERS, WIRE_DTYPES, build_model, check_spec, from_wire, get_params, make_optimizer, require_torch,
    set_params, to_wire,
)

DEFAULTS = {"epochs": 10, "batch_size": 64, "lr": 0.05, "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0,
            "seed": 0, "test_fraction": 0.2, "shards": 0, "local_steps": 1, "wire_dtype": "float32",
            "round_timeout": 60.0, "min_shards": 0.5}
MAX_SHARDS = 256


def _number(params: dict, name: str, kind: type, low: float, high: float) -> Any:
    value = params.get(name, DEFAULTS[name])
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or isinstance(value, int))
    if not ok or not low <= value <= high:
        raise ValidationError(f"train: {name} must be a{'n integer' if kind is int else ' number'} "
                              f"from {low} to {high}, got {value!r}")
    return kind(value)


class TrainTask(TaskType):
    name = "train"
    needs_torch = True

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}  # provider side: one built model per spec, reused across rounds

    # -- head: request --------------------------------------------------------

    def validate(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        torch = require_torch("head node")
        spec = check_spec(params.get("model"))
        out = {"model": spec}
        out["epochs"] = _number(params, "epochs", int, 1, 100_000)
        out["batch_size"] = _number(params, "batch_size", int, 1, 1 << 24)
        out["lr"] = _number(params, "lr", float, 1e-12, 1e6)
        out["momentum"] = _number(params, "momentum", float, 0.0, 0.9999)
        out["weight_decay"] = _number(params, "weight_decay", float, 0.0, 1.0)
        out["seed"] = _number(params, "seed", int, 0, 2**31)
        out["test_fraction"] = _number(params, "test_fraction", float, 0.0, 0.9)
        out["shards"] = _number(params, "shards", int, 0, MAX_SHARDS)
        out["local_steps"] = _number(params, "local_steps", int, 1, 10_000)
        out["round_timeout"] = _number(params, "round_timeout", float, 0.1, 86_400)
        out["min_shards"] = _number(params, "min_shards", float, 0.01, 1.0)
        for name, allowed in (("optimizer", OPTIMIZERS), ("wire_dtype", WIRE_DTYPES)):
            value = params.get(name, DEFAULTS[name])
            if value not in allowed:
                raise ValidationError(f"train: {name} must be one of {', '.join(allowed)}, got {value!r}")
            out[name] = value
        check_params(self.name, params, out)
        x, y = arrays.get("x"), arrays.get("y")
        if x is None or y is None:
            raise ValidationError("train needs arrays 'x' (samples) and 'y' (integer labels)")
        if x.dtype.kind not in "iuf" or y.dtype.kind not in "iu":
            raise ValidationError(f"train: x must be numeric and y integer labels (got {x.dtype}, {y.dtype})")
        if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
            raise ValidationError(f"train: x must be (samples, features...) and y (samples,), got {x.shape}, {y.shape}")
        n_test = int(len(x) * out["test_fraction"])
        if len(x) - n_test < 1:
            raise ValidationError("train: no samples left to train on")
        model = build_model(spec, out["seed"])
        with torch.no_grad():
            try:
                logits = model(torch.from_numpy(np.asarray(x[:2], dtype=np.float32)))
            except Exception as e:
                raise ValidationError(f"train: model {spec} does not accept x of shape {x.shape[1:]}: {e}") from None
        if logits.ndim != 2 or int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
            raise ValidationError(f"train: labels must lie in 0..{logits.shape[1] - 1} for model {spec}")
        return out

    # -- head: rounds -----------------------------------------------------------

    def plan(self, job: JobView) -> list[Shard]:
        p = job.params
        x = job.input("x")
        order = np.random.default_rng(p["seed"]).permutation(len(x))
        n_test = int(len(x) * p["test_fraction"])
        job.allocate("test_idx", (n_test,), np.int64)[:] = order[:n_test]
        train_idx = np.sort(order[n_test:])
        n_train = len(train_idx)
        shards = min(n_train, p["shards"] or max(1, job.ready_slots))
        job.allocate("train_idx", (n_train,), np.int64)[:] = train_idx
        params = get_params(build_model(p["model"], p["seed"]))
        for j, arr in enumerate(params):
            job.allocate(f"param{j}", arr.shape, np.float32)[...] = arr
            for i in range(shards):
                job.allocate(f"g{i}_{j}", arr.shape, np.float32)
        job.allocate("slot_stats", (shards, 4), np.float64)[:] = -1  # step, samples, loss sum, correct
        bounds = block_bounds(n_train, shards)
        steps_per_epoch = math.ceil(n_train / p["batch_size"])
        job.state.update(step=0, epoch=0, shards=shards, bounds=[list(b) for b in bounds], n_params=len(params),
                         steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * p["epochs"], history=[],
                         opt_state=[])
        return self._round(job)

    def _round(self, job: JobView) -> list[Shard]:
        st, p = job.state, job.params
        n_train = st["bounds"][-1][1]
        step = st["step"]
        shards = []
        for i, (lo, hi) in enumerate(st["bounds"]):
            batch = max(1, round(p["batch_size"] * (hi - lo) / n_train))
            shards.append(Shard(step * st["shards"] + i, {
                "model": p["model"], "shard": i, "step": step, "epoch": step // st["steps_per_epoch"],
                "pos": step % st["steps_per_epoch"], "batch": batch, "seed": p["seed"], "lr": p["lr"],
                "local_steps": p["local_steps"], "wire_dtype": p["wire_dtype"], "n_params": st["n_params"]}))
        return shards

    def inputs(self, job: JobView, shard: Shard) -> dict[str, Any]:
        lo, hi = job.state["bounds"][shard.params["shard"]]

        def rows():
            return job.output("train_idx")[lo:hi]

        # the data shard is copied out only for a provider that does not hold it yet (lazy)
        arrays: dict[str, Any] = {"x": lambda: np.asarray(job.input("x")[rows()], dtype=np.float32),
                                  "y": lambda: np.asarray(job.input("y")[rows()])}
        for j in range(job.state["n_params"]):
            arrays[f"p{j}"] = to_wire(job.output(f"param{j}"), job.params["wire_dtype"])
        return arrays

    def cache_keys(self, job: JobView, shard: Shard) -> dict[str, str]:
        i = shard.params["shard"]
        return {"x": f"{job.job_id}/x/{i}", "y": f"{job.job_id}/y/{i}"}  # a provider keeps its data shard

    def round_policy(self, job: JobView) -> tuple[float, float] | None:
        return job.params["round_timeout"], job.params["min_shards"]

    def progress(self, job: JobView) -> tuple[int, int] | None:
        return job.state.get("step", 0), job.state.get("total_steps", 0)

    def merge(self, job: JobView, shard: Shard, result: dict[str, np.ndarray]) -> None:
        """Store the shard's update in its slot (idempotent, so a replayed result cannot count twice)."""
        i, wire = shard.params["shard"], job.params["wire_dtype"]
        stats = result.get("stats")
        if stats is None or stats.shape != (3,):
            raise ValidationError(f"train shard {shard.index}: result has no stats")
        for j in range(job.state["n_params"]):
            update = from_wire(result[f"g{j}"], wire)
            slot = job.output(f"g{i}_{j}")
            if update.size != slot.size:
                raise ValidationError(f"train shard {shard.index}: update {j} has {update.size} values, "
                                      f"expected {slot.size}")
            slot[...] = update.reshape(slot.shape)
        job.output("slot_stats")[i] = [shard.params["step"], *stats]

    def next_round(self, job: JobView) -> list[Shard]:
        torch = require_torch("head node")
        st, p = job.state, job.params
        stats = np.array(job.output("slot_stats"))
        live = [i for i in range(st["shards"]) if stats[i, 0] == st["step"] and stats[i, 1] > 0]
        weights = stats[live, 1] / stats[live, 1].sum()
        model = build_model(p["model"])
        set_params(model, [np.array(job.output(f"param{j}")) for j in range(st["n_params"])])
        optimizer = make_optimizer(p["optimizer"], model.parameters(), p["lr"], p["momentum"], p["weight_decay"])
        self._load_optimizer(job, optimizer, torch)
        with torch.no_grad():
            for j, param in enumerate(model.parameters()):
                avg = sum(w * np.asarray(job.output(f"g{i}_{j}")) for w, i in zip(weights, live))
                if p["local_steps"] == 1:
                    param.grad = torch.from_numpy(np.asarray(avg, dtype=np.float32)).reshape(param.shape)
                else:  # local SGD: apply the averaged weight change directly
                    param.add_(torch.from_numpy(np.asarray(avg, dtype=np.float32)).reshape(param.shape))
        if p["local_steps"] == 1:
            optimizer.step()
        for j, arr in enumerate(get_params(model)):
            job.output(f"param{j}")[...] = arr
        self._save_optimizer(job, optimizer)
        samples = stats[live, 1].sum()
        st["step"] += 1
        entry = {"step": st["step"], "epoch": st["step"] / st["steps_per_epoch"], "shards": len(live),
                 "loss": float(stats[live, 2].sum() / samples), "train_acc": float(stats[live, 3].sum() / samples)}
        if st["step"] % st["steps_per_epoch"] == 0 or st["step"] == st["total_steps"]:
            entry["test_acc"] = self._evaluate(job, model, torch)
        st["history"].append(entry)
        return self._round(job) if st["step"] < st["total_steps"] else []

    def _evaluate(self, job: JobView, model, torch) -> float | None:
        idx = np.asarray(job.output("test_idx"))
        if len(idx) == 0:
            return None
        x = torch.from_numpy(np.asarray(job.input("x")[idx], dtype=np.float32))
        y = np.asarray(job.input("y")[idx])
        with torch.no_grad():
            pred = model(x).argmax(dim=1).numpy()
        return float((pred == y).mean())

    def _save_optimizer(self, job: JobView, optimizer) -> None:
        names = []
        for idx, state in optimizer.state_dict()["state"].items():
            for key, value in state.items():
                arr = value.detach().cpu().numpy().astype(np.float32) if hasattr(value, "detach") else \
                    np.asarray(value, dtype=np.float32)
                name = f"opt{idx}_{key}"
                try:
                    out = job.output(name)
                except (KeyError, FileNotFoundError):
                    out = job.allocate(name, arr.shape, np.float32)
                out[...] = arr
                names.append([int(idx), key])
        job.state["opt_state"] = names

    def _load_optimizer(self, job: JobView, optimizer, torch) -> None:
        if not job.state["opt_state"]:
            return
        state = optimizer.state_dict()
        for idx, key in job.state["opt_state"]:
            value = torch.from_numpy(np.array(job.output(f"opt{idx}_{key}")))
            state["state"].setdefault(idx, {})[key] = value
        optimizer.load_state_dict(state)

    def outputs(self, job: JobView) -> dict[str, np.ndarray]:
        """The trained model's state_dict (parameter and buffer names as torch gives them)."""
        model = build_model(job.params["model"], job.params["seed"])
        set_params(model, [np.array(job.output(f"param{j}")) for j in range(job.state["n_params"])])
        return {name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}

    # -- provider ---------------------------------------------------------------

    def compute(self, params: dict[str, Any], arrays: dict[str, np.ndarray], device: str) -> dict[str, np.ndarray]:
        torch = require_torch("provider")
        key = (params["model"], device, threading.get_ident())  # one model per worker thread
        model = self._models.get(key)
        if model is None:
            model = self._models[key] = build_model(params["model"]).to(device)
        wire, n_params = params["wire_dtype"], params["n_params"]
        start = [from_wire(arrays[f"p{j}"], wire) for j in range(n_params)]
        set_params(model, start)
        x_all, y_all = arrays["x"], arrays["y"]
        n, batch, k = len(x_all), params["batch"], params["local_steps"]
        order = np.random.default_rng([params["seed"], params["epoch"], params["shard"]]).permutation(n)
        local = torch.optim.SGD(model.parameters(), lr=params["lr"]) if k > 1 else None
        samples = loss_sum = correct = 0.0
        for s in range(k):
            rows = order[(np.arange(batch) + (params["pos"] * k + s) * batch) % n]
            x = torch.from_numpy(np.ascontiguousarray(x_all[rows], dtype=np.float32)).to(device)
            y = torch.from_numpy(np.ascontiguousarray(y_all[rows]).astype(np.int64)).to(device)
            model.zero_grad(set_to_none=True)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            loss.backward()
            if local is not None:
                local.step()
            samples += len(rows)
            loss_sum += float(loss.detach()) * len(rows)
            correct += float((logits.argmax(dim=1) == y).sum())
        if local is None:
            updates = [p.grad.detach().cpu().numpy() if p.grad is not None else np.zeros(tuple(p.shape), np.float32)
                       for p in model.parameters()]
        else:
            updates = [new - old.reshape(new.shape) for new, old in zip(get_params(model), start)]
        out = {f"g{j}": to_wire(u, wire) for j, u in enumerate(updates)}
        out["stats"] = np.array([samples, loss_sum, correct], dtype=np.float64)
        return out

"""Synthetic stores written through the records API and ``Store.create``, as agents would."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from ablator import layout, records
from ablator.experiment import data_hash
from ablator.store.base import Store

BASE_CONFIG: dict[str, Any] = {
    "model": {"hidden": 64, "dropout": 0.2, "activation": "relu", "batchnorm": True},
    "train": {"batch_size": 64, "epochs": 5, "optimizer": {"name": "adam", "lr": 0.001}},
}


def ablation_experiment(repeats: int = 3, name: str = "digits-ablation") -> dict[str, Any]:
    return {
        "name": name,
        "entry": "examples.digits.model:DigitsWrapper",
        "config": copy.deepcopy(BASE_CONFIG),
        "metric": {"name": "val_accuracy", "mode": "max"},
        "design": {
            "kind": "ablation",
            "repeats": repeats,
            "seed": 0,
            "ablations": {
                "no_dropout": {"model.dropout": 0.0},
                "gelu": {"model.activation": "gelu"},
                "no_batchnorm": {"model.batchnorm": False},
            },
        },
        "limits": {"max_attempts": 3, "max_takeovers": 5, "lease_seconds": 120},
    }


def search_experiment(
    kind: str = "random", trials: int = 24, space: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "name": "digits-sweep",
        "entry": "examples.digits.model:DigitsWrapper",
        "config": copy.deepcopy(BASE_CONFIG),
        "metric": {"name": "val_loss", "mode": "min"},
        "design": {
            "kind": kind,
            "repeats": 1,
            "seed": 0,
            "trials": trials,
            "space": space
            or {
                "model.dropout": {"choice": [0.0, 0.2, 0.5]},
                "train.optimizer.lr": {"range": [1e-4, 1e-1], "log": True},
                "model.activation": {"choice": ["relu", "gelu"]},
            },
        },
        "limits": {"max_attempts": 3},
    }


def set_path(config: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = config
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value


class StoreBuilder:
    """Writes an experiment and trial records into ``store``."""

    def __init__(self, store: Store, experiment: dict[str, Any]) -> None:
        self.store = store
        self.experiment = experiment
        self.spec = records.ExperimentSpec(
            name=experiment["name"],
            experiment=experiment,
            experiment_hash=data_hash(experiment),
        )
        assert store.create(layout.EXPERIMENT, records.encode_json(self.spec))

    def _put(self, key: str, record: Any, raw: bytes | None = None) -> None:
        assert self.store.create(key, raw if raw is not None else records.encode(record)), key

    def spec_for(
        self,
        index: int,
        overrides: dict[str, Any],
        *,
        variant: str = "",
        repeat: int = 0,
        seed: int | None = None,
    ) -> records.TrialSpec:
        config = copy.deepcopy(self.experiment["config"])
        for path, value in overrides.items():
            set_path(config, path, value)
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        return records.TrialSpec(
            index=index,
            config=config,
            config_hash=digest,
            seed=seed if seed is not None else 1000 + index,
            variant=variant,
            repeat=repeat,
            overrides=overrides,
        )

    def claim(self, index: int, epoch: int, spec: records.TrialSpec | None = None, agent: str = "a1") -> None:
        self._put(
            layout.claim(index, epoch),
            records.Claim(trial=index, epoch=epoch, agent_id=agent, host="h", spec=spec),
        )

    def attempt(
        self,
        index: int,
        epoch: int,
        resumed_from: tuple[int, int] | None = None,
        host: str = "node-1",
        gpu: str | None = "NVIDIA H100",
    ) -> None:
        env = records.Environment(host=host, gpu=gpu, python="3.11", torch="2.13")
        self._put(
            layout.attempt(index, epoch),
            records.Attempt(
                trial=index, epoch=epoch, agent_id="a1", resumed_from=resumed_from, environment=env
            ),
        )

    def metrics(
        self,
        index: int,
        epoch: int,
        steps: Sequence[int],
        value: Callable[[int], dict[str, float]],
        chunk: int = 25,
    ) -> None:
        steps = list(steps)
        for start in range(0, len(steps), chunk):
            part = steps[start : start + chunk]
            rows = [records.MetricRow(step=s, values=value(s)) for s in part]
            self._put(
                layout.metrics(index, epoch, part[-1]),
                records.MetricsChunk(trial=index, epoch=epoch, rows=rows),
            )

    def failed(
        self, index: int, epoch: int, kind: str = "exception", message: str = "boom", step: int | None = None
    ) -> None:
        self._put(
            layout.failed(index, epoch),
            records.Failure(trial=index, epoch=epoch, agent_id="a1", kind=kind, message=message, step=step),  # type: ignore[arg-type]
        )

    def release(self, index: int, epoch: int, step: int | None = None) -> None:
        self._put(
            layout.release(index, epoch), records.Release(trial=index, epoch=epoch, agent_id="a1", step=step)
        )

    def result(
        self,
        index: int,
        epoch: int,
        metrics: dict[str, float],
        *,
        best: dict[str, float] | None = None,
        status: str = "completed",
        steps: int = 0,
        duration_s: float = 10.0,
    ) -> records.Result:
        res = records.Result(
            trial=index,
            epoch=epoch,
            agent_id="a1",
            status=status,  # type: ignore[arg-type]
            metrics=metrics,
            best=best if best is not None else dict(metrics),
            best_step=steps,
            steps=steps,
            duration_s=duration_s,
        )
        self._put(layout.result(index), res)
        return res

    def finished(
        self,
        index: int,
        overrides: dict[str, Any],
        final: float,
        *,
        variant: str = "",
        repeat: int = 0,
        metric: str = "val_accuracy",
        n_steps: int = 20,
        status: str = "completed",
        host: str = "node-1",
        seed: int | None = None,
    ) -> records.TrialSpec:
        """A trial run once, start to end: its curve approaches ``final``."""
        spec = self.spec_for(index, overrides, variant=variant, repeat=repeat, seed=seed)
        self.claim(index, 0, spec)
        self.attempt(index, 0, host=host)
        self.metrics(
            index,
            0,
            range(1, n_steps + 1),
            lambda s: {metric: final * s / n_steps, "train_loss": 1.0 / s},
            chunk=max(1, n_steps // 2),
        )
        self.result(index, 0, {metric: final, "train_loss": 1.0 / n_steps}, status=status, steps=n_steps)
        return spec

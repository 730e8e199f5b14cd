"""A training run's state: its metrics (:class:`TrainResult`), its checkpoints
(:class:`Checkpointing`, the ``save``/``resume`` part of :class:`~dynode.train.Trainer`) and
its identity (:func:`canonical_json`, :func:`run_fingerprint`, :func:`config_diff`)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dynode.checkpoint import is_state_dict, load_checkpoint, load_state
from dynode.errors import CheckpointError, ConfigurationError
from dynode.train.config import TrainingConfig


def canonical_json(data: Mapping[str, Any]) -> str:
    """One text per content: sorted keys, no spaces (what :func:`run_fingerprint` hashes)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def run_fingerprint(data: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a run's resolved config (JSON data)."""
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``"dotted.key: old -> new"`` for every value that differs between two configs given as
    JSON data (a key one of them lacks reads ``<unset>``)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                out.append(f"{key}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}")
            else:
                out += config_diff(old[k], new[k], key)
        return out
    return [] if old == new else [f"{prefix or '<top>'}: {old!r} -> {new!r}"]


@dataclass
class TrainResult:
    """Metrics per epoch (the JSON-lines log as dicts)."""

    history: list[dict] = field(default_factory=list)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


class Checkpointing:
    """The checkpoint part of :class:`~dynode.train.Trainer` (it reads the trainer's
    ``network``, ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``result``, ``config``,
    its run config and spec record, and ``_trainable()``)."""

    def save(self, path: str | Path) -> Path:
        """Weights, optimizer/scheduler/scaler state, epoch, metrics, RNG and config
        (loadable with ``weights_only=True``); written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "param_names": [n for n, _ in self._trainable()],  # the optimizer state's order, by name
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "epoch": self.epoch,
            "history": json.dumps(self.result.history),
            "config": self.config.model_dump_json(),
            **({} if self._run_json is None else {"run_config": self._run_json}),
            **self._spec,  # "spec" (JSON, see dynode.spec) and "spec_error" (why there is none)
            "rng": torch.get_rng_state(),
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # never a half-written checkpoint
        return path

    def resume(self, path: str | Path):
        """Continue the run saved in ``path`` (same config required). A trainer made with
        ``run_config`` requires the checkpoint to hold the same run config: one made for another
        (or that records none) is a :class:`CheckpointError` naming the keys that differ, and
        nothing is loaded. Returns the trainer."""
        ckpt = load_checkpoint(path)
        missing = [k for k in ("model", "optimizer", "epoch", "config", "history", "rng") if k not in ckpt]
        if missing:
            if is_state_dict(ckpt):
                raise CheckpointError(
                    f"{path} is a plain state_dict (weights only), not a training checkpoint: resuming needs "
                    "the optimizer, epoch, RNG and config that Trainer.save / dynode train write (last.pt); "
                    "to start a new run from these weights, load them with dynode.train.load_weights "
                    "(model.weights in a config)")
            raise CheckpointError(f"{path} is not a dynode training checkpoint (it lacks {missing}); resume "
                                  "from the last.pt that dynode train writes")
        if self._run_json is not None:
            self._check_run_config(ckpt.get("run_config"), path)
        try:
            saved = TrainingConfig.model_validate_json(ckpt["config"])
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            raise CheckpointError(f"{path}: the training config stored in it does not read as this "
                                  f"version's TrainingConfig ({str(exc).splitlines()[0][:160]}); start a new "
                                  "run, or resume with the dynode version that wrote it") from None
        # where the metrics are also logged (TensorBoard) does not change the run: either may resume
        if saved.model_copy(update={"logger": self.config.logger}) != self.config:
            diff = {k for k in TrainingConfig.model_fields if getattr(saved, k) != getattr(self.config, k)}
            raise ConfigurationError(f"the checkpoint {path} was made with another config (differs in "
                                     f"{sorted(diff)}); resume with the same config")
        if not is_state_dict(ckpt["model"]):
            raise CheckpointError(f"{path}: its 'model' entry is not a state_dict (names -> tensors)")
        load_state(self.network, ckpt["model"], path)
        try:
            self.optimizer.load_state_dict(self._by_name(ckpt["optimizer"], ckpt.get("param_names"), path))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: its optimizer state does not fit this network's parameters "
                                  f"({str(exc).splitlines()[0][:160]}); it was saved for another model") from None
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        self.result = TrainResult(json.loads(ckpt["history"]))
        torch.set_rng_state(ckpt["rng"])
        return self

    def _check_run_config(self, saved: Any, path) -> None:
        """The checkpoint's run config (canonical JSON) must be this trainer's."""
        if saved == self._run_json:
            return
        if saved is None:
            raise CheckpointError(f"{path} does not record the run config it was made with (plain training or "
                                  "an older dynode wrote it), so it cannot be shown to belong to this run; move "
                                  "it aside to start this run afresh")
        try:
            old = json.loads(saved)
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: its 'run_config' entry is not JSON text; move it aside to start this "
                                  "run afresh") from None
        diff = config_diff(old, json.loads(self._run_json))
        if diff:  # none: the same values written otherwise (1 and 1.0)
            raise CheckpointError(f"the checkpoint {path} was made for another run config (it differs in "
                                  f"{len(diff)} value(s): {'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); "
                                  "resume with the config it was made with, or move it aside to start this run "
                                  "afresh")

    def _by_name(self, opt_state: dict, saved_names, path) -> dict:
        """The saved optimizer state re-indexed to this network's parameter order. The state is
        kept by position; a network rebuilt from a spec (or by another dynode version) may
        register the same parameters in another order, and momentum would then be applied to
        the wrong tensors. Checkpoints without names are taken as they are."""
        names = [n for n, _ in self._trainable()]
        if saved_names is None or list(saved_names) == names:
            return opt_state
        if sorted(saved_names) != sorted(names):
            raise CheckpointError(f"{path}: its optimizer state is for the parameters {len(saved_names)} "
                                  f"named in it, not this network's {len(names)}; it was saved for another model")
        new_index = {n: i for i, n in enumerate(names)}
        old_to_new = {i: new_index[n] for i, n in enumerate(saved_names)}
        # the groups (weights; learnt taus and delays) hold the same names in both orders
        return {"state": {old_to_new[i]: v for i, v in opt_state["state"].items()},
                "param_groups": [dict(g, params=sorted(old_to_new[i] for i in g["params"]))
                                 for g in opt_state["param_groups"]]}

"""A fit's checkpoint and its identity.

With ``checkpoint_dir``, ``last.pt`` holds the fit after every iteration
(:func:`write_checkpoint`: weights, observation, optimizer state, loss history, finished
restarts, the run's config as canonical JSON, :func:`dynode.train.state.canonical_json`;
written atomically; read with ``weights_only=True``, :func:`dynode.checkpoint.load_checkpoint`);
``resume=True`` continues it exactly (the same iterations as an uninterrupted fit) and
:func:`read_checkpoint` refuses a checkpoint of another fit, naming what differs
(:func:`dynode.train.state.config_diff`).

The identity is :func:`_run_record`: the fitted names, areas, experiments, observation,
solver and optimiser settings, and sha256 fingerprints of the model's weights, the images and
the fitted recordings (:func:`_fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from dynode.checkpoint import load_checkpoint
from dynode.errors import CheckpointError
from dynode.network import Network
from dynode.observe import Observation
from dynode.recordings import CONDITION_COORDS
from dynode.spec import weights_fingerprint
from dynode.train.state import canonical_json, config_diff

CHECKPOINT_KIND = "dynode-fit"
"""The ``kind`` entry of a fit's checkpoint."""


def _run_record(net: Network, ds: xr.Dataset, names, areas, experiments, observe: Observation, solver, dt,
                optimizer, steps, lr, restarts, seed, tol, patience, background, images: Tensor) -> dict:
    """What makes a fit this fit, as JSON data (resume refuses a checkpoint whose record differs)."""
    return {"kind": CHECKPOINT_KIND, "params": list(names), "areas": dict(areas), "experiments": list(experiments),
            "observe": {"name": observe.name, **observe.params()}, "solver": solver, "dt": dt, "optimizer": optimizer,
            "steps": steps,
            "lr": lr, "restarts": restarts, "seed": seed, "tol": tol, "patience": patience,
            "background": str(background), "images": _fingerprint([images.detach().double().cpu().numpy()]),
            "model": weights_fingerprint(net), "populations": list(net.populations),
            "recordings": _fingerprint([ds[v].values for v in areas] + [ds["time"].values]
                                       + [ds[c].values for c in CONDITION_COORDS])}


def _fingerprint(arrays: Sequence[np.ndarray]) -> str:
    """sha256 of the arrays' values (numbers as float64, anything else as text)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes() if np.issubdtype(a.dtype, np.number)
                 else str(a.tolist()).encode())
    return h.hexdigest()


def write_checkpoint(path: Path | None, record: dict, restart: int, history: list[float], done: list[dict],
                     status: str, net: Network, observation: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Save the fit to ``path`` (nothing when it is None): the run ``record``, the restart and
    its loss ``history``, the finished restarts ``done``, the ``status`` (``"running"`` or
    ``"diverged"``) and the states of the network, the observation and the optimizer."""
    if path is None:
        return
    state = {"kind": CHECKPOINT_KIND, "run_config": canonical_json(record), "restart": restart,
             "history": json.dumps(history), "done": json.dumps(done), "status": status,
             "model": net.state_dict(), "observation": observation.state_dict(), "optimizer": optimizer.state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # never a half-written checkpoint


def read_checkpoint(path: Path, record: dict) -> dict:
    """The fit checkpoint at ``path``, refused (:class:`~dynode.errors.CheckpointError`) when it
    is not a fit's or its run record differs from ``record``, naming the differences."""
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path} is not a fit checkpoint (dynode fit writes one with kind "
                              f"{CHECKPOINT_KIND!r}); move it aside or pass overwrite=True")
    saved = json.loads(ckpt["run_config"])
    diff = config_diff(saved, record)
    if diff:
        raise CheckpointError(f"the checkpoint {path} is of another fit ({len(diff)} difference(s): "
                              f"{'; '.join(diff[:4])}); resume with the same model, recordings and settings, "
                              "or pass overwrite=True to start over")
    return ckpt

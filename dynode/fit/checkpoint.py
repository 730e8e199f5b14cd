"""A fit's checkpoint and its identity.

With ``checkpoint_dir``, ``last.pt`` holds the fit after every iteration
(weights, observation, optimizer state, loss history, finished restarts, the run's config as
canonical JSON; read with ``weights_only=True``); ``resume=True`` continues it exactly (the
same iterations as an uninterrupted fit) and refuses a checkpoint of another fit, naming what
differs (:func:`dynode.train.state.config_diff`).

The identity is :func:`_run_record`: the fitted names, areas, experiments, observation,
solver and optimiser settings, and sha256 fingerprints of the model's weights, the images and
the fitted recordings (:func:`_fingerprint`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import xarray as xr
from torch import Tensor

from dynode.network import Network
from dynode.observe import Observation
from dynode.recordings import CONDITION_COORDS
from dynode.spec import weights_fingerprint

CHECKPOINT_KIND = "dynode-fit"


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

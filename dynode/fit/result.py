"""What a fit found (:class:`FitResult`): the best restart's values, their spread over the
restarts (mean, sample sd, every value), the loss and ``R^2`` per area, the history, the
status and the fitted courses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["FitResult"]


@dataclass
class FitResult:
    """What :func:`fit` found.

    params : the best restart's fitted values (floats, lists for per-unit tensors; ms for
        times), observation gains and offsets under ``gain:a`` / ``offset:a``.
    units : the unit of each entry of ``params``.
    spread : per parameter, over restarts that finished: ``mean``, ``sd`` (0 for one restart)
        and ``values`` (one per restart).
    loss : the best restart's final loss (``mean_a (1 - R^2_a)``); ``r2``: ``R^2`` per area.
    history : the loss at every iteration, one list per restart.
    restarts : per restart ``params``, ``loss``, ``r2``, ``iterations``, ``status``.
    best : the index of the best restart. ``status``: ``"converged"`` (every restart met the
        ``tol``/``patience`` rule), ``"max_steps"`` (one ran out of steps), ``"diverged"``
        (the fit stopped; ``message`` says where and why).
    prediction : the fitted observation in the recordings' layout (``xarray.Dataset``; None
        when the model diverged at its start values).
    seconds : wall time of this call; ``iterations``: iterations done over all restarts.
    """

    params: dict[str, Any]
    units: dict[str, str]
    spread: dict[str, dict]
    loss: float
    r2: dict[str, float]
    history: list[list[float]]
    restarts: list[dict]
    best: int
    status: str
    message: str
    prediction: xr.Dataset | None = field(repr=False, default=None)
    seconds: float = 0.0
    iterations: int = 0

    def summary(self) -> str:
        """The fitted values (mean +- sd over restarts), ``R^2`` per area and the status."""
        lines = [f"fit: {self.status} ({self.iterations} iterations, {self.seconds:.1f} s; {self.message})"]
        for k, v in self.params.items():
            s = self.spread.get(k, {})
            unit = "" if self.units.get(k) in ("1", None) else f" {self.units[k]}"
            if isinstance(v, float):
                sd = s.get("sd")
                extra = f" (restarts: mean {s['mean']:.4g}, sd {sd:.2g})" if s and len(s["values"]) > 1 else ""
                lines.append(f"  {k} = {v:.4g}{unit}{extra}")
            else:
                lines.append(f"  {k} = {np.array2string(np.asarray(v), precision=4)}{unit}")
        lines.append("  R^2: " + ", ".join(f"{a} {r:.3f}" for a, r in self.r2.items()))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON data (without the prediction)."""
        return {"params": self.params, "units": self.units, "spread": self.spread, "loss": self.loss,
                "r2": self.r2, "history": self.history, "restarts": self.restarts, "best": self.best,
                "status": self.status, "message": self.message, "seconds": self.seconds,
                "iterations": self.iterations}


def _spread(done: Sequence[dict]) -> dict[str, dict]:
    out = {}
    for k in done[0]["params"] if done else ():
        vals = [d["params"][k] for d in done if k in d["params"]]
        arr = np.asarray(vals, dtype=np.float64)
        mean, sd = arr.mean(0), (arr.std(0, ddof=1) if len(vals) > 1 else np.zeros_like(arr[0]))
        out[k] = {"mean": mean.tolist(), "sd": sd.tolist(), "values": vals}
    return out

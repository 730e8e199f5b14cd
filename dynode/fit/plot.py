"""The figure of a fit: data (grey) and fit (colour) per area and experiment."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dynode.analysis.style import pyplot, style
from dynode.errors import ConfigurationError
from dynode.fit.result import FitResult
from dynode.recordings import load_recordings
from dynode.recordings.analysis import area_course

__all__ = ["plot_fit"]


def plot_fit(result: FitResult, recordings, path, *, title: str | None = None) -> Path:
    """Data (grey) and fit (colour) per area, one row per experiment (PNG)."""
    ds = load_recordings(recordings)
    pred = result.prediction
    if pred is None:
        raise ConfigurationError("plot_fit: the result holds no prediction")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigurationError(f"plot_fit writes a PNG; give a path ending in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    areas = list(pred.data_vars)
    kinds = list(dict.fromkeys(str(k) for k in pred["experiment"].values))
    plt = pyplot()
    with style():
        fig, axes = plt.subplots(len(kinds), len(areas), figsize=(3.8 * len(areas), 2.4 * len(kinds)),
                                 squeeze=False, layout="constrained")
        for j, a in enumerate(areas):
            data = area_course(ds, a)
            for i, kind in enumerate(kinds):
                ax = axes[i][j]
                sel = np.flatnonzero(np.asarray(pred["experiment"].values).astype(str) == kind)
                cmap = plt.get_cmap("viridis")
                for m, c in enumerate(sel):
                    cond = pred.isel(condition=c)
                    match = np.flatnonzero((np.asarray(ds["experiment"].values).astype(str) == kind)
                                           & np.isclose(ds["contrast"].values, float(cond["contrast"]))
                                           & np.isclose(ds["duration"].values, float(cond["duration"]))
                                           & np.isclose(ds["isi"].values, float(cond["isi"])))
                    t = pred["time"].values
                    if match.size:
                        ax.plot(t, data.isel(condition=match[0]).values, color="0.6", lw=1.0)
                    ax.plot(t, cond[a].values, color=cmap(m / max(len(sel) - 1, 1)), lw=1.2)
                ax.set_title(f"{a} {kind} (R$^2$ {result.r2.get(a, float('nan')):.3f})", fontsize=9)
                ax.set_xlabel("time (ms)")
                ax.set_ylabel(str(ds[a].attrs.get("units", "")))
        if title:
            fig.suptitle(title)
        fig.savefig(path)
    plt.close(fig)
    return path

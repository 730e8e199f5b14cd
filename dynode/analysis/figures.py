"""Figures of the analysis (matplotlib, Agg backend, PNG): one function per figure, each
taking analysis results (xarray data, one variable per population) and an output path and
returning that path. One panel per population, in the order of the data's variables (the
archive's population order: the hierarchy); time in ms, responses in the archive's units.
Sizes, label wording and population order come from :mod:`dynode.analysis.style`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from dynode.analysis.style import label, legend, pyplot, rate_label, style
from dynode.archive import RATE_UNITS
from dynode.errors import ConfigurationError

__all__ = ["plot_time_courses", "plot_summation", "plot_recovery", "plot_contrast_response", "plot_convergence"]


def _variables(data) -> dict[str, xr.DataArray]:
    if isinstance(data, xr.DataArray):
        return {str(data.name or "response"): data}
    if isinstance(data, xr.Dataset):
        return {str(k): v for k, v in data.data_vars.items()}
    if isinstance(data, Mapping):
        return {str(k): v for k, v in data.items()}
    raise ConfigurationError(f"expected a DataArray, a Dataset or a mapping of populations, got "
                             f"{type(data).__name__}")


def _png(path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigurationError(f"figures are written as PNG; give a path ending in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _figure(data, path, title: str | None, draw, *args, height: float = 3.0) -> Path:
    """What every per-population figure shares: the PNG ``path`` checked, one panel per
    variable of ``data`` (``draw(axes, {name: DataArray}, *args)`` fills them) in the style,
    ``title`` on top, written to ``path``."""
    plt = pyplot()
    path = _png(path)
    pops = _variables(data)
    with style():
        fig, axes = plt.subplots(1, len(pops), figsize=(3.6 * len(pops), height), squeeze=False,
                                 layout="constrained")
        draw(axes[0], pops, *args)
        if title:
            fig.suptitle(title)
        fig.savefig(path)
    plt.close(fig)
    return path


def plot_time_courses(courses, path, *, dim: str | None = None, title: str | None = None) -> Path:
    """Time courses per condition (lines, coloured along ``dim``; default the courses' one
    non-time dimension) and population (panels), from the start of the baseline window when
    the courses carry one (``baseline_ms``)."""
    return _figure(courses, path, title, _draw_time_courses, dim)


def _draw_time_courses(axes, pops, dim):
    for ax, (name, da) in zip(axes, pops.items()):
        others = [d for d in da.dims if d != "time"]
        d = dim or (others[0] if len(others) == 1 else None)
        if len(others) > 1 and d is None:
            raise ConfigurationError(f"population {name!r} has several condition dims {others}; pass dim=")
        lo = (da.attrs.get("baseline_ms") or [None])[0]  # hide the settling before the baseline
        if lo is not None:
            da = da.sel(time=slice(lo, None))
        t = da["time"].values
        if d is None:
            ax.plot(t, da.values, color="k")
        else:
            rest = [x for x in others if x != d]
            da2 = da.mean(rest) if rest else da
            values = da2[d].values
            colors = pyplot().cm.viridis(np.linspace(0, 0.9, len(values)))
            unit = "" if d in ("contrast", "n_pulses", "image", "sample") else " ms"
            for v, col in zip(values, colors):
                ax.plot(t, da2.sel({d: v}).values, color=col, lw=1.2, label=f"{v:g}{unit}")
        ax.set_title(name)
        ax.set_xlabel(label(da["time"].attrs.get("long_name", "time"), "ms"))
        ax.set_ylabel(rate_label(da.attrs, "mean firing rate"))
        ax.axhline(0, color="0.8", lw=0.5)
        ax.axvline(0, color="0.8", lw=0.5, ls=":")
    legend(axes[-1], title=dim or None)


def plot_summation(summed, path, *, dim: str = "duration", title: str | None = None) -> Path:
    """Summed response vs pulse duration (markers) and the linear prediction from the shortest
    pulse, ``R(T_min) T / T_min`` (dashed)."""
    return _figure(summed, path, title, _draw_summation, dim)


def _draw_summation(axes, pops, dim):
    for ax, (name, da) in zip(axes, pops.items()):
        T = np.asarray(da[dim].values, dtype=np.float64)
        R = np.asarray(da.values, dtype=np.float64)
        ax.plot(T, R, "o-", color="C0", label="model")
        ax.plot(T, R[np.argmin(T)] * T / T.min(), "--", color="0.5", label="linear prediction")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(T, [f"{x:g}" for x in T])
        ax.tick_params(axis="x", labelrotation=45)
        ax.set_title(name)
        ax.set_xlabel(label(dim, "ms"))
        ax.set_ylabel(rate_label(da.attrs, "summed response"))
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))


def plot_recovery(recovery, path, *, dim: str = "isi", title: str | None = None) -> Path:
    """Recovery of the second pulse's response vs the inter-stimulus interval (1 = full)."""
    return _figure(recovery, path, title, _draw_recovery, dim)


def _draw_recovery(axes, pops, dim):
    for ax, (name, da) in zip(axes, pops.items()):
        isi = np.asarray(da[dim].values, dtype=np.float64)
        ax.plot(isi, da.values, "o-", color="C1")
        ax.axhline(1.0, color="0.6", ls="--", lw=1)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(isi, [f"{x:g}" for x in isi])
        ax.tick_params(axis="x", labelrotation=45)
        ax.set_title(name)
        ax.set_xlabel(label("inter-stimulus interval", "ms"))
        ax.set_ylabel("recovery (1 = full)")


def plot_contrast_response(responses, path, *, fits: Mapping | None = None, c50: Mapping | None = None,
                           dim: str = "contrast", title: str | None = None) -> Path:
    """Peak response vs contrast (markers, log axis) per population, with Groen's c50 (the
    half-peak contrast, ``c50``: population -> value; a dotted line) and, as an extra, the
    fitted Naka-Rushton function (``fits``: population -> :class:`HyperbolicRatioFit`; dashed,
    its c50 marked as extrapolated when outside the tested contrasts)."""
    return _figure(responses, path, title, _draw_contrast, fits, c50, dim, height=3.8)


def _draw_contrast(axes, pops, fits, c50, dim):
    for ax, (name, da) in zip(axes, pops.items()):
        c = np.asarray(da[dim].values, dtype=np.float64)
        ax.plot(c, da.values, "o", color="C2", label="model")
        fit = (fits or {}).get(name)
        if fit is not None:
            cc = np.geomspace(c[c > 0].min(), c.max(), 100)
            tag = " (extrapolated)" if getattr(fit, "extrapolates", False) else ""
            ax.plot(cc, fit(cc), "--", color="C2", alpha=0.6, label=f"Naka-Rushton, c50 {fit.c50:.3g}{tag}")
        g = (c50 or {}).get(name)
        if g is not None and np.isfinite(g):
            ax.axvline(g, color="0.4", ls=":", lw=1, label=f"c50 (half peak) {g:.3g}")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(c[c > 0], [f"{x:g}" for x in c[c > 0]])
        ax.tick_params(axis="x", labelrotation=45)
        ax.set_title(name)
        ax.set_xlabel(label("contrast", "fraction of full contrast"))
        ax.set_ylabel(rate_label(da.attrs, "peak firing rate"))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3))  # below: the curve stays visible


def plot_convergence(ds: xr.Dataset, path=None, *, metric: str = "max_abs_error",
                     population: str | None = None, tolerance: float | None = None,
                     slopes: Sequence[int] | None = None):
    """The dt/tau study of :func:`dynode.convergence` (``ds``): log-log ``metric`` against
    ``dt / tau``, one panel per population (or ``population``).

    Each panel names its population and tau, has ``dt`` (ms) on its top axis, ticks at the
    tested steps, dashed reference slopes ``dt^p`` (``slopes``, default each solver's rounded
    fitted order), and, with a tolerance (``tolerance=`` or the one the study was run with),
    a horizontal line there and a dotted mark at each solver's largest ``dt`` within it.
    Writes a PNG to ``path`` if given; returns the matplotlib ``Figure``.
    """
    if metric not in ("max_abs_error", "rel_l2_error"):
        raise ConfigurationError(f"metric must be 'max_abs_error' or 'rel_l2_error', got {metric!r}")
    pops = [str(p) for p in ds["population"].values]
    if population is not None:
        if population not in pops:
            raise ConfigurationError(f"population {population!r} is not in the study; it has {pops}")
        pops = [population]
    if tolerance is None:
        tolerance = ds.attrs.get("tolerance")
    if tolerance is not None and metric != "max_abs_error":
        raise ConfigurationError("the tolerance is on max_abs_error; plot metric='max_abs_error' with it")
    with style():
        return _plot_convergence(ds, pops, path, metric, tolerance, slopes)


def _plot_convergence(ds, pops, path, metric, tolerance, slopes):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ncol = min(len(pops), 3)
    nrow = math.ceil(len(pops) / ncol)
    fig = Figure(figsize=(4.6 * ncol, 4.0 * nrow))
    FigureCanvasAgg(fig)
    dts = ds["dt"].values
    colors = [f"C{i}" for i in range(len(ds["solver"]))]
    tick = FuncFormatter(lambda v, _: f"{v:.3g}")
    ylabel = (label("max |r - r_ref|", ds[metric].attrs.get("units", RATE_UNITS)) if metric == "max_abs_error"
              else "relative L2 error")
    for n, p in enumerate(pops):
        ax = fig.add_subplot(nrow, ncol, n + 1)
        tau = float(ds["tau"].sel(population=p))
        x = dts / tau
        for s, color in zip(ds["solver"].values, colors):
            e = ds[metric].sel(solver=s, population=p).values
            ax.loglog(x, e, "o-", color=color, label=str(s))
            ok = np.isfinite(e) & (e > 0)
            if not ok.any():
                continue
            fitted = float(ds["order"].sel(solver=s, population=p))
            orders = slopes if slopes is not None else ([int(round(fitted))] if math.isfinite(fitted) else [])
            j = int(np.flatnonzero(ok)[0])
            m = (j + len(x) - 1) // 2 if len(x) > 1 else 0
            for q in orders:
                ax.loglog(x, e[j] * (x / x[j]) ** q, "--", color=color, lw=0.7, alpha=0.6)
                ax.annotate(f"slope {q}", (x[m], e[j] * (x[m] / x[j]) ** q), color=color,
                            ha="left", va="top", xytext=(4, -2), textcoords="offset points")
            if "largest_dt" in ds and tolerance is not None:
                best = float(ds["largest_dt"].sel(solver=s, population=p))
                if math.isfinite(best):
                    ax.axvline(best / tau, color=color, ls=":", lw=1.0)
        if tolerance is not None:
            ax.axhline(tolerance, color="k", ls="--", lw=1.0, label=f"tolerance {tolerance:g}")
        ax.set_xticks(x)
        ax.xaxis.set_major_formatter(tick)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("dt / tau")
        ax.set_ylabel(ylabel)
        ax.set_title(f"population {p!r} (tau = {tau:g} ms)")
        top = ax.secondary_xaxis("top", functions=(lambda v, tau=tau: v * tau, lambda v, tau=tau: v / tau))
        top.set_xticks(dts)
        top.xaxis.set_major_formatter(tick)
        top.xaxis.set_minor_formatter(NullFormatter())
        top.set_xlabel("dt (ms)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, format="png")
    return fig

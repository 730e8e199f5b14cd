r"""The dt/tau study: how much of a model's behaviour is the step size?

:func:`convergence` integrates the same field and stimulus with every solver at every
``dt``, and a tight adaptive ``reference``, all saved on one common grid in ms, and reports
per population and solver

* ``max_abs_error``  = :math:`\max_{t, b, u} |r(t) - r_{ref}(t)|`,
* ``rel_l2_error``   = :math:`\|r - r_{ref}\|_2 / \|r_{ref}\|_2` over the grid,
* ``observed_order`` between consecutive step sizes,
  :math:`p = \log(e_i / e_{i+1}) / \log(dt_i / dt_{i+1})`, and ``order``, the least-squares
  slope of :math:`\log e` against :math:`\log dt` (both from ``max_abs_error``);

with coordinates ``dt`` (ms), ``dt_over_tau`` (per population) and ``tau``. A solve that
diverges records ``inf``; a ``dt`` that does not fit the delays records ``NaN`` (the
reason is in ``attrs["failures"]``). :func:`plot_convergence` draws error against ``dt``
on log-log axes with reference slopes and writes a PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from dynode.errors import ConfigurationError, DelayError, DivergenceError, SolverError
from dynode.history import delay_steps

__all__ = ["convergence", "plot_convergence"]


def _label(solver) -> str:
    if isinstance(solver, str):
        return solver.lower()
    return getattr(solver, "name", type(solver).__name__.lower())


def _default_reference():
    from dynode.solvers import Dopri5

    return Dopri5(rtol=1e-8, atol=1e-10)


def convergence(field, stimulus=None, *, t_end: float, dts: Sequence[float],
                solvers: Sequence = ("euler", "rk4"), reference=None, t0: float = 0.0,
                grid: float | None = None, initial_state=None, batch_size: int | None = None,
                max_abs: float | None = 1e6) -> xr.Dataset:
    """Errors of fixed-step solvers at each ``dt`` against a tight adaptive reference.

    Parameters
    ----------
    field, stimulus : as for :func:`dynode.integrate`.
    t_end, t0 : the interval (ms).
    dts : step sizes (ms) to compare; each must divide ``grid`` and ``t_end - t0``.
    solvers : names or solver objects (default Euler and RK4).
    reference : the reference solver (default ``Dopri5(rtol=1e-8, atol=1e-10)``); solved
        once and read on the grid through its dense output.
    grid : spacing (ms) of the common comparison grid; default ``max(dts)``.

    Returns
    -------
    ``xarray.Dataset`` with variables ``max_abs_error``, ``rel_l2_error``,
    ``observed_order`` (dims ``solver, dt, population``) and ``order``
    (``solver, population``); coordinates ``dt``, ``dt_over_tau``, ``tau``.
    """
    from dynode.integrate import integrate

    dts = sorted((float(d) for d in dts), reverse=True)
    if not dts or any(not (d > 0 and math.isfinite(d)) for d in dts):
        raise ConfigurationError(f"dts must be positive step sizes in ms, got {dts}")
    grid = float(grid) if grid is not None else dts[0]
    for d in dts:
        if delay_steps(grid, d) is None:
            raise ConfigurationError(f"dt = {d:g} ms does not divide the comparison grid spacing "
                                     f"{grid:g} ms; pass grid= a common multiple of all dts")
    if delay_steps(t_end - t0, grid) is None:
        raise ConfigurationError(f"the grid spacing {grid:g} ms does not divide t_end - t0 = "
                                 f"{t_end - t0:g} ms")
    reference = reference if reference is not None else _default_reference()
    kw = dict(t0=t0, t_end=t_end, save_at=grid, initial_state=initial_state,
              batch_size=batch_size, max_abs=max_abs)
    with torch.no_grad():
        ref = integrate(field, stimulus, solver=reference, **kw)
    pops = list(ref.states)
    ref_np = {p: ref.states[p].double() for p in pops}
    labels = [_label(s) for s in solvers]
    if len(set(labels)) != len(labels):
        raise ConfigurationError(f"solvers must be distinct, got {labels}")
    shape = (len(solvers), len(dts), len(pops))
    max_abs_err = np.full(shape, np.nan)
    rel_l2 = np.full(shape, np.nan)
    failures: list[str] = []
    for i, solver in enumerate(solvers):
        for j, dt in enumerate(dts):
            try:
                with torch.no_grad():
                    sol = integrate(field, stimulus, solver=solver, dt=dt, **kw)
            except (DivergenceError, SolverError) as exc:
                max_abs_err[i, j, :] = rel_l2[i, j, :] = np.inf
                failures.append(f"{labels[i]} dt={dt:g}: {exc}")
                continue
            except DelayError as exc:
                failures.append(f"{labels[i]} dt={dt:g}: {exc}")
                continue
            for k, p in enumerate(pops):
                diff = sol.states[p].double() - ref_np[p]
                max_abs_err[i, j, k] = float(diff.abs().max())
                den = float(ref_np[p].norm())
                rel_l2[i, j, k] = float(diff.norm()) / den if den > 0 else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        log_e, log_dt = np.log(max_abs_err), np.log(np.asarray(dts))
        observed = np.full(shape, np.nan)
        observed[:, 1:, :] = (log_e[:, :-1] - log_e[:, 1:]) / (log_dt[:-1] - log_dt[1:])[None, :, None]
        order = np.full(shape[::2], np.nan)
        for i in range(len(solvers)):
            for k in range(len(pops)):
                ok = np.isfinite(log_e[i, :, k]) & (max_abs_err[i, :, k] > 0)
                if ok.sum() >= 2:
                    order[i, k] = np.polyfit(log_dt[ok], log_e[i, ok, k], 1)[0]
    taus = field.time_constants()
    tau = np.array([taus.get(p, np.nan) for p in pops], dtype=float)
    ds = xr.Dataset(
        {"max_abs_error": (("solver", "dt", "population"), max_abs_err),
         "rel_l2_error": (("solver", "dt", "population"), rel_l2),
         "observed_order": (("solver", "dt", "population"), observed),
         "order": (("solver", "population"), order)},
        coords={"solver": labels, "dt": np.asarray(dts), "population": pops, "tau": ("population", tau),
                "dt_over_tau": (("dt", "population"), np.asarray(dts)[:, None] / tau[None, :])},
        attrs={"reference": repr(reference), "t0": t0, "t_end": t_end, "grid_ms": grid,
               "failures": "\n".join(failures), "reference_nfe": ref.stats.nfe},
    )
    ds["dt"].attrs["units"] = "ms"
    ds["tau"].attrs["units"] = "ms"
    return ds


def plot_convergence(ds: xr.Dataset, path=None, *, metric: str = "max_abs_error",
                     population: str | None = None, slopes: Sequence[int] | None = None):
    """Log-log ``metric`` against ``dt`` per solver, with dashed reference slopes ``dt^p``.

    ``population``: one population (default: the largest error over populations).
    ``slopes``: the orders to draw (default: each solver's rounded fitted order).
    Writes a PNG to ``path`` if given; returns the matplotlib ``Figure``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if metric not in ("max_abs_error", "rel_l2_error"):
        raise ConfigurationError(f"metric must be 'max_abs_error' or 'rel_l2_error', got {metric!r}")
    err = ds[metric].sel(population=population) if population else ds[metric].max("population")
    fig = Figure(figsize=(5.0, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    dts = ds["dt"].values
    for s in ds["solver"].values:
        e = err.sel(solver=s).values
        ax.loglog(dts, e, "o-", label=str(s))
        ok = np.isfinite(e) & (e > 0)
        if not ok.any():
            continue
        orders = slopes if slopes is not None else (
            [int(round(float(ds["order"].sel(solver=s).max())))] if np.isfinite(ds["order"].sel(solver=s)).any() else [])
        j = int(np.flatnonzero(ok)[0])
        for p in orders:
            ax.loglog(dts, e[j] * (dts / dts[j]) ** p, "--", color="grey", lw=0.8)
            ax.annotate(f"dt^{p}", (dts[-1], e[j] * (dts[-1] / dts[j]) ** p), fontsize=7, color="grey")
    ax.set_xlabel("dt (ms)")
    ax.set_ylabel(metric.replace("_", " ") + (f" ({population})" if population else ""))
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, format="png", dpi=100)
    return fig

r"""The dt/tau study: how much of a model's behaviour is the step size?

:func:`convergence` integrates the same field and stimulus with every fixed-step solver at
every ``dt``, and a tight adaptive ``reference`` (by default ``Dopri5(rtol=1e-8,
atol=1e-10)``, the same in ``dynode convergence``), all saved on one common grid in ms, and
reports per population and solver

* ``max_abs_error``  = :math:`\max_{t, b, u} |r(t) - r_{ref}(t)|` (in the units of the rates),
* ``rel_l2_error``   = :math:`\|r - r_{ref}\|_2 / \|r_{ref}\|_2` over the grid,
* ``observed_order`` between consecutive step sizes,
  :math:`p = \log(e_i / e_{i+1}) / \log(dt_i / dt_{i+1})`, and ``order``, the least-squares
  slope of :math:`\log e` against :math:`\log dt` (both from ``max_abs_error``);
* with ``tolerance=`` (rate units): ``largest_dt`` (per solver and population; ``largest_dt_all``
  over populations), the largest ``dt`` whose ``max_abs_error`` is within the tolerance at
  that ``dt`` and at every smaller one tested, and ``attrs["answer"]``, one line per solver;

with coordinates ``dt`` (ms), ``dt_over_tau`` (per population) and ``tau`` (ms); every
variable carries ``units`` and ``long_name``. Solvers are labelled by name, or by the keys of
a mapping (``{"simultaneous": Euler(), "sequential": Euler(order="sequential")}``). A solve
that diverges records ``inf``, flags ``failed`` (per solver and ``dt``) and warns
(:class:`~dynode.errors.StabilityWarning`, the reasons also in ``attrs["failures"]``); a ``dt`` that cannot
represent a delay is an error before anything runs. :func:`dynode.plot_convergence` (in
:mod:`dynode.analysis.figures`, with the other figures) draws one panel per population: error against ``dt / tau`` (and ``dt`` in ms on the top axis), the
tolerance and the largest ``dt`` within it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from dynode.archive import RATE_UNITS
from dynode.errors import (ConfigurationError, DelayError, DivergenceError, SolverError, StabilityWarning,
                           user_stacklevel)
from dynode.history import compatible_dts, delay_steps
from dynode.integrate import integrate
from dynode.solver import Solver, get_solver
from dynode.solvers import Dopri5, Euler, FixedStepSolver

__all__ = ["convergence", "REFERENCE_RTOL", "REFERENCE_ATOL"]

REFERENCE_RTOL, REFERENCE_ATOL = 1e-8, 1e-10  # the default reference, API and CLI alike


def _label(solver: Solver) -> str:
    sequential = isinstance(solver, Euler) and solver.order != "simultaneous"
    return f"{solver.name} ({solver.order})" if sequential else solver.name


def _default_reference():

    return Dopri5(rtol=REFERENCE_RTOL, atol=REFERENCE_ATOL)


def _fixed_solvers(solvers) -> list[tuple[str, object]]:
    """``[(label, solver object)]``; only fixed-step solvers (the study varies their dt)."""

    items = list(solvers.items()) if isinstance(solvers, Mapping) else [(None, s) for s in solvers]
    if not items:
        raise ConfigurationError("solvers is empty; give at least one fixed-step solver (e.g. ['euler', 'rk4'])")
    out = []
    for label, s in items:
        obj = get_solver(s)
        if not isinstance(obj, FixedStepSolver):
            raise ConfigurationError(
                f"convergence varies the step dt of fixed-step solvers (Euler, Midpoint, Heun, RK4), but "
                f"{type(obj).__name__} chooses its own steps from its tolerances; pass it as reference= "
                "(or compare its tolerances with integrate and stats.nfe)")
        out.append((str(label) if label is not None else _label(obj), obj))
    labels = [lab for lab, _ in out]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise ConfigurationError(f"solvers share the labels {dup}; label them with a mapping, e.g. "
                                 "solvers={'simultaneous': Euler(), 'sequential': Euler(order='sequential')}")
    return out


def _check_delays(field, dts: Sequence[float]) -> None:
    """Every dt must represent every delay: say which do not, before anything runs."""
    delays = [(label, d) for label, (_, d) in field.delays().items() if d > 0]
    bad = [(dt, label, d) for dt in dts for label, d in delays if delay_steps(d, dt) is None]
    if bad:
        dt, label, d = bad[0]
        fits = ", ".join(f"{x:g}" for x in compatible_dts([x for _, x in delays]))
        which = sorted({b[0] for b in bad}, reverse=True)
        raise DelayError(f"dts {', '.join(f'{x:g}' for x in which)} ms cannot represent every delay (connection "
                         f"{label}: {d:g} ms is not a multiple of dt = {dt:g} ms); use dts that divide "
                         f"the delays, e.g. {fits} ms")


def _largest_within(err: np.ndarray, dts: Sequence[float], tolerance: float) -> float:
    """The largest dt (dts descending) with err <= tolerance there and at every smaller dt."""
    best = math.nan
    for j in range(len(dts) - 1, -1, -1):
        if not err[j] <= tolerance:
            break
        best = dts[j]
    return best


def convergence(field, stimulus=None, *, t_end: float, dts: Sequence[float],
                solvers: Sequence | Mapping = ("euler", "rk4"), reference=None, t0: float = 0.0,
                grid: float | None = None, tolerance: float | None = None, initial_state=None,
                batch_size: int | None = None, max_abs: float | None = 1e6) -> xr.Dataset:
    """Errors of fixed-step solvers at each ``dt`` against a tight adaptive reference.

    Parameters
    ----------
    field, stimulus : as for :func:`dynode.integrate`.
    t_end, t0 : the interval (ms).
    dts : step sizes (ms) to compare; each must divide ``grid``, ``t_end - t0`` and every delay.
    solvers : fixed-step solver names or objects (default Euler and RK4), or a mapping
        ``{label: solver}`` to compare variants of one method.
    reference : the reference solver (default ``Dopri5(rtol=1e-8, atol=1e-10)``, as the CLI);
        solved once and read on the grid through its dense output.
    grid : spacing (ms) of the common comparison grid; default ``max(dts)``.
    tolerance : the largest acceptable ``max_abs_error`` (rate units); the result then states
        per solver the largest ``dt`` within it (``largest_dt``, ``attrs["answer"]``).

    Returns
    -------
    ``xarray.Dataset`` with variables ``max_abs_error``, ``rel_l2_error``,
    ``observed_order`` (dims ``solver, dt, population``), ``order`` (``solver, population``)
    and, with a tolerance, ``largest_dt``, ``largest_dt_over_tau`` (``solver, population``)
    and ``largest_dt_all`` (``solver``); coordinates ``dt``, ``dt_over_tau``, ``tau``.
    """

    dts = sorted((float(d) for d in dts), reverse=True)
    if not dts or any(not (d > 0 and math.isfinite(d)) for d in dts):
        raise ConfigurationError(f"dts must be positive step sizes in ms, got {dts}")
    if len(set(dts)) != len(dts):
        raise ConfigurationError(f"dts must be distinct, got {dts}")
    if tolerance is not None and not (isinstance(tolerance, (int, float)) and 0 < tolerance < math.inf):
        raise ConfigurationError(f"tolerance must be a finite error > 0 (rate units), got {tolerance!r}")
    grid = float(grid) if grid is not None else dts[0]
    for d in dts:
        if delay_steps(grid, d) is None:
            raise ConfigurationError(f"dt = {d:g} ms does not divide the comparison grid spacing "
                                     f"{grid:g} ms; pass grid= a common multiple of all dts")
    if delay_steps(t_end - t0, grid) is None:
        raise ConfigurationError(f"the grid spacing {grid:g} ms does not divide t_end - t0 = "
                                 f"{t_end - t0:g} ms")
    items = _fixed_solvers(solvers)
    _check_delays(field, dts)
    reference = reference if reference is not None else _default_reference()
    kw = dict(t0=t0, t_end=t_end, save_at=grid, initial_state=initial_state,
              batch_size=batch_size, max_abs=max_abs)
    with torch.no_grad():
        ref = integrate(field, stimulus, solver=reference, **kw)
    pops = list(ref.states)
    ref_np = {p: ref.states[p].double() for p in pops}
    labels = [lab for lab, _ in items]
    shape = (len(items), len(dts), len(pops))
    max_abs_err = np.full(shape, np.nan)
    rel_l2 = np.full(shape, np.nan)
    failures: list[str] = []
    failed = np.zeros(shape[:2], dtype=bool)
    for i, (label, solver) in enumerate(items):
        for j, dt in enumerate(dts):
            try:
                with torch.no_grad():
                    sol = integrate(field, stimulus, solver=solver, dt=dt, **kw)
            except (DivergenceError, SolverError) as exc:
                max_abs_err[i, j, :] = rel_l2[i, j, :] = np.inf
                failed[i, j] = True
                failures.append(f"{label} dt={dt:g}: {str(exc).splitlines()[0]}")
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
        for i in range(len(items)):
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
         "order": (("solver", "population"), order),
         "failed": (("solver", "dt"), failed)},
        coords={"solver": labels, "dt": np.asarray(dts), "population": pops, "tau": ("population", tau),
                "dt_over_tau": (("dt", "population"), np.asarray(dts)[:, None] / tau[None, :])},
        attrs={"reference": repr(reference), "t0": t0, "t_end": t_end, "grid_ms": grid,
               "failures": "\n".join(failures), "reference_nfe": ref.stats.nfe,
               "solvers": "\n".join(f"{lab}: {s!r}" for lab, s in items)},
    )
    meta = {
        "max_abs_error": (RATE_UNITS, "max over time, batch and units of |r - r_ref| (in the rates' units)"),
        "rel_l2_error": ("1", "||r - r_ref||_2 / ||r_ref||_2 over the comparison grid"),
        "observed_order": ("1", "log(e_i / e_i+1) / log(dt_i / dt_i+1) of max_abs_error"),
        "order": ("1", "least-squares slope of log max_abs_error against log dt"),
        "failed": (None, "the solve diverged or failed (errors recorded as inf; reasons in attrs['failures'])"),
        "dt": ("ms", "step size"), "tau": ("ms", "time constant (smallest of the population)"),
        "dt_over_tau": ("1", "step size / time constant"),
        "solver": (None, "solver (label)"), "population": (None, "population"),
    }
    if failures:  # loud: an inf row is a result only together with its reason
        warnings.warn(f"convergence: {len(failures)} of {failed.size} solves failed and are recorded as inf "
                      f"(ds['failed']): " + "; ".join(failures), StabilityWarning, stacklevel=user_stacklevel())
    if tolerance is not None:
        largest = np.array([[_largest_within(max_abs_err[i, :, k], dts, tolerance) for k in range(len(pops))]
                            for i in range(len(items))]).reshape(len(items), len(pops))
        ds["largest_dt"] = (("solver", "population"), largest)
        ds["largest_dt_over_tau"] = (("solver", "population"), largest / tau[None, :])
        ds["largest_dt_all"] = (("solver",), np.array([np.nan if np.isnan(r).any() else r.min() for r in largest]))
        ds.attrs["tolerance"] = float(tolerance)
        ds.attrs["answer"] = "\n".join(_answer(ds, lab, tolerance) for lab in labels)
        what = f"largest dt tested with max_abs_error <= {tolerance:g} there and at every smaller dt"
        meta.update(largest_dt=("ms", what), largest_dt_over_tau=("1", what + ", over tau"),
                    largest_dt_all=("ms", what + ", for every population"))
    for name, (units, long_name) in meta.items():
        ds[name].attrs.update(long_name=long_name, **({} if units is None else {"units": units}))
    return ds


def _answer(ds: xr.Dataset, label: str, tolerance: float) -> str:
    """One line: the largest dt of ``label`` within the tolerance, and its dt/tau."""
    dt = float(ds["largest_dt_all"].sel(solver=label))
    if math.isnan(dt):
        smallest = float(ds["dt"].min())
        return (f"{label}: no dt tested keeps max |r - r_ref| <= {tolerance:g} (down to dt = {smallest:g} ms); "
                "try smaller dts")
    ratios = ", ".join(f"{p}: {dt / float(t):.3g}" for p, t in zip(ds["population"].values, ds["tau"].values))
    return f"{label}: dt <= {dt:g} ms keeps max |r - r_ref| <= {tolerance:g} (dt/tau = {ratios})"

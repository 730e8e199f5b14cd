r"""The reaction-time experiment's analysis (``EXPERIMENTS["reaction_time"]``, run by
:func:`dynode.experiments.reaction_time_experiment`): per condition (accumulator noise x bound
x contrast) the reaction-time distribution, the accuracy and the fraction of trials decided.

Definitions (``n`` trials of a condition, ``d`` of them decided before the deadline):

* ``p_decided = d / n``;
* ``accuracy``: the fraction of the decided trials whose choice is the image's class (chance
  ``1 / K``); undefined (NaN, flagged) when no trial decided;
* RT quantiles ``q`` (0.1, 0.3, 0.5, 0.7, 0.9; ``median_rt`` is 0.5) over **all** ``n``
  trials, an undecided trial counting as slower than any decided one (censored at the
  deadline): the lowest RT with at least ``q n`` trials at or below it (no interpolation).
  A quantile that falls among the undecided trials is not known (it lies after the deadline):
  NaN, flagged; never the median of the decided trials alone, which would be too fast;
* ``skew``: the quantile skewness ``(q90 - q50) / (q50 - q10)`` (> 1: right-skewed, the
  shape of human RT distributions); undefined without spread (a noiseless condition runs
  one trial per image and has no trial-to-trial variability of its own) or without q90.

:func:`trends` states what a psychophysicist checks (Spearman rank correlations, per noise and
bound): median RT falls and accuracy rises with contrast; raising the bound makes responses
slower and more accurate.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from dynode.analysis.style import pyplot, style
from dynode.errors import ConfigurationError, MissingConditionsError, UndefinedMetricWarning, user_stacklevel
from dynode.stimuli import EXPERIMENTS

__all__ = ["QUANTILES", "ReactionTimes", "analyze_reaction_times", "is_reaction_time_archive", "plot_reaction_times",
           "format_reaction_times", "trends"]

QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)
"""The RT quantiles reported (those of the diffusion-model literature, e.g. Ratcliff & McKoon
2008, Neural Comput 20:873)."""
_KIND = "reaction_time"


def _open(source) -> xr.Dataset:
    if isinstance(source, xr.Dataset):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ConfigurationError(f"no reaction-time archive at {str(path)!r}")
        return xr.open_zarr(path, consolidated=False).load()
    raise ConfigurationError(f"give a reaction-time archive (path or xarray.Dataset), got {type(source).__name__}")


def is_reaction_time_archive(source) -> bool:
    """Whether ``source`` (a path or Dataset) holds the reaction-time experiment."""
    try:
        ds = _open(source)
        return "dynode_reaction_times" in ds.attrs and ds.attrs.get("kind") == _KIND
    except (ConfigurationError, OSError, ValueError, KeyError):
        return False


@dataclass
class ReactionTimes:
    """What :func:`analyze_reaction_times` found.

    table : Dataset over ``(noise, bound, contrast)``: ``median_rt`` (ms), ``rt_quantile``
        (``quantile`` dim, ms), ``skew``, ``accuracy``, ``p_decided``, ``n_trials``.
    chance : ``1 / K``.
    flags : ``{"noise=.. bound=.. contrast=..: key": reason}`` for every undefined value.
    attrs : the archive's attributes (the accumulator's parameters, deadline, solver).
    """

    table: xr.Dataset
    chance: float
    flags: dict[str, str] = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)

    def flag(self, where: str, key: str, reason: str) -> None:
        self.flags[f"{where}: {key}"] = reason
        warning = UndefinedMetricWarning(f"{where}: {key}: {reason}")
        warning.flag = (where, key)  # format_reaction_times lists it: flags_in_tables keeps the CLI from repeating it
        warnings.warn(warning, stacklevel=user_stacklevel())

    def summary(self) -> dict:
        """JSON-ready: per noise and bound, ``{contrast: value}`` of each measure (None where
        undefined), the flags and :func:`trends`."""
        t = self.table
        out: dict = {"chance": self.chance, "conditions": [], "flags": dict(self.flags), "trends": trends(self)}
        for nu in t["noise"].values:
            for b in t["bound"].values:
                row = t.sel(noise=nu, bound=b)
                cell = {"noise": float(nu), "bound": float(b)}
                for key in ("median_rt", "accuracy", "p_decided", "skew"):
                    cell[key] = {float(c): _num(v) for c, v in zip(row["contrast"].values, row[key].values)}
                out["conditions"].append(cell)
        return out


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _quantile(sorted_rt: np.ndarray, q: float) -> float:
    """The lowest value with at least ``q n`` of the ``n`` values at or below it (``inf`` for
    an undecided trial)."""
    n = len(sorted_rt)
    return float(sorted_rt[max(0, math.ceil(q * n - 1e-9) - 1)])


def analyze_reaction_times(source) -> ReactionTimes:
    """The reaction-time analysis of an archive (path) or Dataset written by
    :func:`dynode.experiments.reaction_time_experiment` (see the module doc for the
    definitions). Undefined values are NaN with a reason in ``flags`` (and an
    :class:`~dynode.errors.UndefinedMetricWarning`); an archive lacking what the analysis
    reads is a :class:`~dynode.errors.MissingConditionsError`."""
    ds = _open(source)
    needs = EXPERIMENTS[_KIND].needs
    missing = [c for c in (*needs, "noise", "bound", "rt", "choice") if c not in ds.variables]
    if missing or ds.attrs.get("kind") != _KIND:
        raise MissingConditionsError(f"not a reaction-time archive: it lacks {missing or ['kind=reaction_time']}; "
                                     "write it with dynode.experiments.reaction_time_experiment", missing=missing)
    k = int(ds.attrs["num_classes"])
    deadline = float(ds.attrs["deadline_ms"])
    contrasts = np.unique(ds["contrast"].values)
    nus, bounds = ds["noise"].values, ds["bound"].values
    shape = (len(nus), len(bounds), len(contrasts))
    med, acc, pdec, skew, ntr = (np.full(shape, np.nan) for _ in range(5))
    quant = np.full((*shape, len(QUANTILES)), np.nan)
    res = ReactionTimes(table=xr.Dataset(), chance=1.0 / k, attrs=dict(ds.attrs))
    ran = ds["ran"].values if "ran" in ds else np.ones(ds["rt"].shape, bool)
    label, contrast = ds["label"].values, ds["contrast"].values
    for i, nu in enumerate(nus):
        for j, b in enumerate(bounds):
            for c_i, c in enumerate(contrasts):
                sel = (contrast == c) & ran[i, j]
                rt, choice = ds["rt"].values[i, j, sel], ds["choice"].values[i, j, sel]
                n = int(sel.sum())
                where = f"noise={nu:g} bound={b:g} contrast={c:g}"
                decided = np.isfinite(rt)
                ntr[i, j, c_i], pdec[i, j, c_i] = n, decided.mean()
                if not decided.any():
                    res.flag(where, "rt, accuracy", f"no decision before the deadline ({deadline:g} ms) in any of "
                             f"{n} trials")
                    continue
                acc[i, j, c_i] = float((choice[decided] == label[sel][decided]).mean())
                srt = np.sort(np.where(decided, rt, np.inf))
                qs = np.array([_quantile(srt, q) for q in QUANTILES])
                late = ~np.isfinite(qs)
                if late.any():
                    res.flag(where, "rt quantiles " + ", ".join(f"{q:g}" for q in np.asarray(QUANTILES)[late]),
                             f"{n - int(decided.sum())} of {n} trials undecided by the deadline ({deadline:g} ms): "
                             "these quantiles lie after it (not known)")
                qs[late] = np.nan
                quant[i, j, c_i] = qs
                med[i, j, c_i] = qs[QUANTILES.index(0.5)]
                lo, mid, hi = qs[0], qs[2], qs[-1]
                if np.isfinite(hi) and mid - lo > 0:
                    skew[i, j, c_i] = (hi - mid) / (mid - lo)
                elif np.isfinite(hi):
                    res.flag(where, "skew", "no spread below the median (q50 = q10: identical reaction times, "
                             "e.g. a noiseless condition)")
    dims = ("noise", "bound", "contrast")
    res.table = xr.Dataset(
        {"median_rt": (dims, med, {"units": "ms"}), "rt_quantile": ((*dims, "quantile"), quant, {"units": "ms"}),
         "skew": (dims, skew), "accuracy": (dims, acc), "p_decided": (dims, pdec), "n_trials": (dims, ntr)},
        coords={"noise": nus, "bound": bounds, "contrast": contrasts, "quantile": list(QUANTILES)})
    return res


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(y[ok]) == 0 or np.ptp(x[ok]) == 0:
        return math.nan

    def rank(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for u in np.unique(v):  # ties share their mean rank
            r[v == u] = r[v == u].mean()
        return r

    a, b = rank(x[ok]), rank(y[ok])
    return float(np.corrcoef(a, b)[0, 1])


def trends(res: ReactionTimes) -> dict:
    """Spearman rank correlations per condition row (``None``: fewer than 3 defined points or
    no variation): ``rt_vs_contrast`` and ``accuracy_vs_contrast`` per ``(noise, bound)``
    (expected < 0 and > 0), ``rt_vs_bound`` and ``accuracy_vs_bound`` per ``(noise,
    contrast)`` (expected > 0 and >= 0), keys ``"noise=.. bound=.."`` / ``"noise=.. contrast=.."``."""
    t = res.table
    out: dict = {"rt_vs_contrast": {}, "accuracy_vs_contrast": {}, "rt_vs_bound": {}, "accuracy_vs_bound": {}}
    c, b = t["contrast"].values, t["bound"].values
    for nu in t["noise"].values:
        for bb in b:
            row = t.sel(noise=nu, bound=bb)
            key = f"noise={nu:g} bound={bb:g}"
            out["rt_vs_contrast"][key] = _num(_spearman(c, row["median_rt"].values))
            out["accuracy_vs_contrast"][key] = _num(_spearman(c, row["accuracy"].values))
        for cc in c:
            row = t.sel(noise=nu, contrast=cc)
            key = f"noise={nu:g} contrast={cc:g}"
            out["rt_vs_bound"][key] = _num(_spearman(b, row["median_rt"].values))
            out["accuracy_vs_bound"][key] = _num(_spearman(b, row["accuracy"].values))
    return out


def format_reaction_times(res: ReactionTimes) -> str:
    """The table as text: per noise and bound, median RT (ms) / accuracy / decided per contrast
    (``n/a`` where undefined)."""
    t = res.table
    cs = t["contrast"].values
    lines = [f"reaction times (median ms / accuracy / fraction decided; chance {res.chance:.2f}; deadline "
             f"{res.attrs.get('deadline_ms', math.nan):g} ms)",
             "noise  bound  " + "  ".join(f"c={c:<16g}" for c in cs)]

    def f(v, fmt):
        return "n/a" if not np.isfinite(v) else format(v, fmt)

    for nu in t["noise"].values:
        for b in t["bound"].values:
            row = t.sel(noise=nu, bound=b)
            cells = [f"{f(m, '.0f'):>5} / {f(a, '.2f'):>4} / {f(p, '.2f'):>4}" for m, a, p in
                     zip(row["median_rt"].values, row["accuracy"].values, row["p_decided"].values)]
            lines.append(f"{nu:<5g}  {b:<5g}  " + "  ".join(f"{x:<18}" for x in cells))
    if res.flags:
        lines.append(f"{len(res.flags)} undefined value(s) flagged (n/a above; ReactionTimes.flags):")
        lines.extend(f"  {k}: {reason}" for k, reason in res.flags.items())
    return "\n".join(lines)


def plot_reaction_times(res: ReactionTimes, path, *, noise: float | None = None, bound: float | None = None) -> Path:
    """The figure (PNG at ``path``), two rows of three panels: (a) median RT and (b) accuracy
    against contrast, one line per bound, at ``noise``; (c) the speed-accuracy curve, accuracy
    against median RT over the bounds, one line per contrast, at ``noise``; (d) median RT and
    (e) accuracy against the noise level at ``bound``, one line per contrast; (f) the RT
    quantiles (0.1 .. 0.9) per contrast at ``noise`` and ``bound``. ``noise`` and ``bound``
    default to the middle levels of the archive. Undefined points are left out (gaps), never
    drawn as numbers; chance is the dotted line."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigurationError(f"figures are written as PNG; give a path ending in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    t = res.table
    nus, bs, cs = t["noise"].values, t["bound"].values, t["contrast"].values
    nu = float(nus[len(nus) // 2]) if noise is None else float(noise)
    b0 = float(bs[len(bs) // 2]) if bound is None else float(bound)
    for name, v, have in (("noise", nu, nus), ("bound", b0, bs)):
        if not np.isclose(have, v).any():
            raise ConfigurationError(f"plot_reaction_times: {name}={v:g} is not in the archive ({have.tolist()})")
    plt = pyplot()
    with style():
        fig, axes = plt.subplots(2, 3, figsize=(13, 7), layout="constrained")
        ax = axes.ravel()
        col_b = plt.get_cmap("viridis")(np.linspace(0.1, 0.9, len(bs)))
        col_c = plt.get_cmap("plasma")(np.linspace(0.1, 0.85, len(cs)))
        at = t.sel(noise=nu, method="nearest")
        atb = t.sel(bound=b0, method="nearest")
        for col, b in zip(col_b, bs):
            ax[0].plot(cs, at.sel(bound=b)["median_rt"], "o-", color=col, label=f"B={b:g}")
            ax[1].plot(cs, at.sel(bound=b)["accuracy"], "o-", color=col, label=f"B={b:g}")
        for col, c in zip(col_c, cs):
            ax[2].plot(at.sel(contrast=c)["median_rt"], at.sel(contrast=c)["accuracy"], "o-", color=col,
                       label=f"c={c:g}")
            ax[3].plot(nus, atb.sel(contrast=c)["median_rt"], "o-", color=col, label=f"c={c:g}")
            ax[4].plot(nus, atb.sel(contrast=c)["accuracy"], "o-", color=col, label=f"c={c:g}")
            ax[5].plot(np.asarray(QUANTILES), at.sel(bound=b0, method="nearest").sel(contrast=c)["rt_quantile"].values,
                       "o-", color=col, label=f"c={c:g}")
        for a in ax[:2]:
            a.set_xscale("log", base=2)
            a.set_xlabel("contrast")
        for a in (ax[1], ax[2], ax[4]):
            a.axhline(res.chance, color="0.6", ls=":", lw=1)
            a.set_ylabel("accuracy")
        for a in (ax[0], ax[3]):
            a.set_ylabel("median RT (ms)")
        ax[0].set_title(f"RT vs contrast (noise {nu:g})")
        ax[1].set_title(f"accuracy vs contrast (noise {nu:g})")
        ax[2].set_title(f"speed-accuracy over bounds {bs.min():g}-{bs.max():g} (noise {nu:g})")
        ax[2].set_xlabel("median RT (ms)")
        ax[3].set_title(f"RT vs noise (B={b0:g})")
        ax[4].set_title(f"accuracy vs noise (B={b0:g})")
        for a in ax[3:5]:
            a.set_xlabel("accumulator noise nu")
        ax[5].set_title(f"RT quantiles (noise {nu:g}, B={b0:g})")
        ax[5].set_xlabel("quantile")
        ax[5].set_ylabel("RT (ms)")
        ax[0].legend(fontsize=7)
        ax[2].legend(fontsize=7)
        a = res.attrs
        fig.suptitle(f"reaction times: accumulators tau_a={a.get('tau_ms', math.nan):g} ms, "
                     f"leak={a.get('leak', math.nan):g}, evidence {a.get('evidence', '?')}; deadline "
                     f"{a.get('deadline_ms', math.nan):g} ms")
        fig.savefig(path)
    plt.close(fig)
    return path

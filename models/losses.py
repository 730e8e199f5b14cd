r"""Training losses over trajectories (``dynode.models.losses``).

* :func:`classification_loss` -- cross-entropy of per-time logits ``(T, B, K)`` over a time
  window: the times ``t_i >= onset + reaction_time`` and ``t_i > onset`` (and ``<= until``),
  each weighted by ``w_i`` (uniform, or a ramp ``w_i \propto i`` rising over the window),
  weights summing to 1: ``L = sum_i w_i CE(logits_i, y)``. The state at ``t = onset`` itself
  is never in the window: a causal run's state at ``t`` depends on the input before ``t``
  only, so at the onset it is the pre-stimulus state (at ``onset = t0`` the initial state),
  whose logits are the same for every image (the bias alone for a zero state).
* :func:`energy_loss` -- activity (energy) penalty ``sum_p lambda_p mean_{t,b,units} |r_p|^q``
  with ``q = 1`` (L1) or ``2`` (L2) and per-population weights ``lambda_p``.
* :func:`decision_loss` -- the speed-accuracy objective of an accumulator readout
  (:mod:`dynode.models.decision`): cross-entropy of the accumulators at the decision plus a
  cost per ms of reaction time, ``L = mean_b [CE(A_b(T_b) / temperature, y_b) + c T_b]``.
* :func:`stability_loss` -- deviation from the pre-stimulus baseline after the stimulus is
  removed: ``sum_p mean_{t >= t_off} (r_p(t) - \bar r_p)^2`` with ``\bar r_p`` the mean over
  the baseline window (per sample and unit).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dynode.errors import ConfigurationError, ShapeError
from dynode.tolerances import TIME_RTOL

__all__ = ["time_weights", "classification_loss", "energy_loss", "stability_loss", "decision_loss"]


def _times(ts, n: int) -> list[float]:
    out = ts.tolist() if isinstance(ts, Tensor) else [float(t) for t in ts]
    if len(out) != n:
        raise ShapeError(f"{len(out)} times given for {n} time points")
    return out


def time_weights(ts, *, onset: float = 0.0, reaction_time: float = 0.0, until: float | None = None,
                 ramp: bool = False) -> Tensor:
    """Weights ``w_i`` (float64, summing to 1) over the times ``ts`` (ms): zero before
    ``onset + reaction_time``, at the onset itself (the pre-stimulus state, which carries no
    information about the stimulus; it matters for ``reaction_time = 0``) and after
    ``until``; uniform or a linear ramp ``1, 2, ..., m``."""
    t = torch.as_tensor(ts, dtype=torch.float64).flatten()
    start = float(onset) + float(reaction_time)
    mask = (t >= start - TIME_RTOL) & (t > float(onset) + TIME_RTOL)
    if until is not None:
        mask &= t <= float(until) + TIME_RTOL
    m = int(mask.sum())
    if m == 0:
        opening = "[" if float(reaction_time) > 0 else "("  # the onset itself is left out
        raise ConfigurationError(f"no time point lies in the loss window {opening}{start:g}, "
                                 f"{'end' if until is None else f'{until:g}'}] ms "
                                 f"(times {float(t[0]):g} .. {float(t[-1]):g} ms)")
    w = torch.zeros_like(t)
    w[mask] = torch.arange(1, m + 1, dtype=torch.float64) if ramp else 1.0
    return w / w.sum()


def classification_loss(logits: Tensor, target: Tensor, ts=None, *, onset: float = 0.0,
                        reaction_time: float = 0.0, until: float | None = None, ramp: bool = False,
                        weights: Tensor | None = None, **ce_options) -> Tensor:
    """Weighted cross-entropy over time of ``logits`` ``(T, B, K)`` (or ``(B, K)``: plain CE).

    ``weights`` (``(T,)``) overrides the window/ramp weights computed from ``ts`` (ms).
    ``ce_options`` go to ``F.cross_entropy`` (e.g. ``label_smoothing``).
    """
    if logits.dim() == 2:
        return F.cross_entropy(logits, target, **ce_options)
    if logits.dim() != 3:
        raise ShapeError(f"logits must be (T, B, K) or (B, K), got {tuple(logits.shape)}")
    T = logits.shape[0]
    if weights is None:
        if ts is None:
            raise ConfigurationError("classification_loss over time needs ts (ms) or weights")
        weights = time_weights(_times(ts, T), onset=onset, reaction_time=reaction_time, until=until,
                               ramp=ramp)
    weights = torch.as_tensor(weights)
    if weights.shape != (T,):
        raise ShapeError(f"weights must have shape ({T},), got {tuple(weights.shape)}")
    idx = torch.nonzero(weights.detach().cpu() != 0).flatten().tolist()  # once, not per step
    weights = weights.to(dtype=logits.dtype, device=logits.device)
    per_t = torch.stack([F.cross_entropy(logits[i], target, **ce_options) for i in idx])
    return (per_t * weights[idx]).sum()


def energy_loss(states: Mapping[str, Tensor], *, p: int = 1,
                weights: Mapping[str, float] | float = 1.0) -> Tensor:
    """``sum_pop w_pop * mean |r|^p`` over every element of each population's tensor
    (trajectory ``(T, B, ...)`` or state ``(B, ...)``). ``weights``: one number for all
    populations or a dict (populations missing from it are left out)."""
    if p not in (1, 2):
        raise ConfigurationError(f"energy_loss p must be 1 (L1) or 2 (L2), got {p!r}")
    if not states:
        raise ConfigurationError("energy_loss got no states")
    total = None
    for name, r in states.items():
        if isinstance(weights, Mapping):
            if name not in weights:
                continue
            w = float(weights[name])
        else:
            w = float(weights)
        term = r.abs().mean() if p == 1 else r.square().mean()
        term = w * term
        total = term if total is None else total + term
    if total is None:
        raise ConfigurationError(f"energy_loss weights name none of the populations {list(states)}")
    return total


def stability_loss(states: Mapping[str, Tensor], ts, *, baseline: tuple[float, float],
                   after: float, populations: Sequence[str] | None = None) -> Tensor:
    """``sum_p mean_{t >= after} (r_p(t) - mean_{t in baseline} r_p)^2`` for trajectories
    ``(T, B, ...)`` saved at ``ts`` (ms)."""
    names = list(states) if populations is None else list(populations)
    first = states[names[0]]
    t = _times(ts, first.shape[0])
    b = [i for i, x in enumerate(t) if baseline[0] - TIME_RTOL <= x <= baseline[1] + TIME_RTOL]
    a = [i for i, x in enumerate(t) if x >= after - TIME_RTOL]
    if not b or not a:
        raise ConfigurationError(f"stability_loss: the baseline window {baseline} ms or the time "
                                 f"after {after:g} ms holds no saved time ({t[0]:g} .. {t[-1]:g} ms)")
    total = None
    for name in names:
        r = states[name]
        ref = r[b].mean(0, keepdim=True)
        term = (r[a] - ref).square().mean()
        total = term if total is None else total + term
    return total


def decision_loss(state: Tensor, target: Tensor, times: Tensor, *, cost_per_ms: float, deadline: float,
                  temperature: float = 1.0, **ce_options) -> Tensor:
    r"""The speed-accuracy objective of a decision (:func:`dynode.models.decide`):

    .. math::

        L = \frac{1}{B} \sum_b \Big[ \mathrm{CE}\big(A_b(T_b) / \mathrm{temperature},\ y_b\big)
            + c\, T_b \Big]

    with ``A_b(T_b)`` the accumulators at sample ``b``'s decision (``state``, ``(B, K)``: the
    held state of the terminal event), ``T_b`` its reaction time (``times``, ``(B,)`` ms,
    differentiable through the event, implicit function theorem) and ``c = cost_per_ms``
    (loss units per ms). A sample that did not decide (``T_b`` NaN) costs the whole
    ``deadline`` (ms; no gradient through its time) and the cross-entropy of its accumulators
    at the deadline. Raising ``c`` trades accuracy for speed. The recipe: learn the bound
    (``decide(..., bound=B)`` with ``B`` a tensor parameter) with the network or alone: the
    cross-entropy raises ``B`` (a later decision, larger margins between the accumulators),
    ``c T`` lowers it; their balance is the speed-accuracy operating point (measured on a tiny
    net, ``tests/test_reaction_time.py``: three SGD steps raise ``B`` from 1 to 1.1 without a
    cost and lower it to about 0.5 at ``c = 0.02`` per ms, mean RT 50 -> 25 ms). Through the
    readout the two terms mostly agree (a sharper softmax is both faster and surer).
    ``ce_options`` go to ``F.cross_entropy``."""
    if not (isinstance(state, Tensor) and isinstance(times, Tensor) and isinstance(target, Tensor)):
        raise ConfigurationError("decision_loss: state, target and times must be tensors (Decisions.state, labels, "
                                 "Decisions.times)")
    if state.dim() != 2 or times.shape != state.shape[:1] or target.shape != state.shape[:1]:
        raise ShapeError(f"decision_loss: state must be (B, K), target and times (B,); got {tuple(state.shape)}, "
                         f"{tuple(target.shape)}, {tuple(times.shape)}")
    for name, v, zero in (("cost_per_ms", cost_per_ms, True), ("deadline", deadline, False),
                          ("temperature", temperature, False)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (
                not zero and v == 0):
            raise ConfigurationError(f"decision_loss: {name} must be a finite number {'>= 0' if zero else '> 0'}, "
                                     f"got {v!r}")
    t = torch.where(torch.isnan(times), torch.full_like(times, float(deadline)), times)
    ce = F.cross_entropy(state / float(temperature), target, **ce_options)
    return ce + float(cost_per_ms) * t.to(ce.dtype).mean()

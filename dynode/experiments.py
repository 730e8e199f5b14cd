"""In-silico experiments: run a model through stimulus protocols into labelled archives.

A protocol (e.g. :func:`dynode.stimuli.groen2022`) is one labelled batch of conditions with
exact onsets, durations and gaps in ms; :func:`run_protocol` simulates the model through it
without gradients and streams the trajectories to a zarr archive whose ``sample`` dimension
carries the condition coordinates (``contrast``, ``duration``, ``isi``, ``image``).
:func:`groen2022_experiments` runs the three experiments of Groen et al. (2022).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from dynode.errors import BaselineDriftWarning, ConfigurationError
from dynode.record import Record
from dynode.simulate import SimulationResult, simulate
from dynode.integrate import integrate
from dynode.network import Network
from dynode.stimuli import Constant
from dynode.stimuli import groen2022
from dynode.stimuli import present
from dynode.tolerances import TIME_RTOL

__all__ = ["run_protocol", "groen2022_experiments", "settle", "Settled", "recovery_after_offset", "GROEN_KINDS"]

GROEN_KINDS = ("contrast", "duration", "repetition")


@dataclass(frozen=True)
class Settled:
    """The outcome of :func:`settle`.

    state : ``{population: (batch, *shape)}`` at the end of settling (the steady state).
    time : ms of settling it took (a multiple of ``window``).
    drift : per population, ``|m(T) - m(T - window)|`` of the population mean rate ``m`` over
        the last window (the rate's own units).
    level : per population, ``max |m|`` over the last window.
    steady : every population met ``drift <= rtol * level + atol``.
    """

    state: dict[str, Tensor]
    time: float
    drift: dict[str, float] = field(default_factory=dict)
    level: dict[str, float] = field(default_factory=dict)
    steady: bool = True

    def attrs(self) -> dict:
        """JSON attributes for an archive."""
        return {"settle_ms": self.time, "settle_steady": self.steady,
                "settle_drift": {k: self.drift[k] for k in sorted(self.drift)},
                "settle_level": {k: self.level[k] for k in sorted(self.level)}}


def settle(network, background, *, dt: float, solver="euler", window: float = 100.0,
           max_time: float = 3000.0, rtol: float = 1e-3, atol: float = 1e-6) -> Settled:
    r"""Run ``network`` on a constant ``background`` until its activity is steady.

    From the network's initial state, integrate in windows of ``window`` ms (continuing
    exactly, delayed past included) until every population's mean rate ``m(t)`` changes by
    at most ``rtol * max|m| + atol`` over the last window, or ``max_time`` ms have passed;
    then warn (:class:`~dynode.errors.BaselineDriftWarning`) with the drift measured. Start an
    experiment from ``settled.state``: a steady state is its own constant history, so a
    baseline recorded from it is flat, whatever the network's slow loops.

    ``background``: a stimulus value (tensor or ``{input: tensor}``, batch first) held constant.
    """

    for name, v in (("window", window), ("max_time", max_time)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ConfigurationError(f"settle: {name} must be a positive number of ms, got {v!r}")
    stim = Constant(background)
    n_steps = round(window / dt)
    if abs(n_steps * dt - window) > TIME_RTOL * window:
        raise ConfigurationError(f"settle: window={window} ms is not a whole number of steps of dt={dt} ms")
    saves = [i * dt for i in range(n_steps + 1)]
    previous, t, steady = None, 0.0, False
    drift, level = {}, {}
    with torch.no_grad():
        while t < max_time and not steady:
            sol = integrate(network, stim, t0=t, t_end=t + window, dt=dt, solver=solver,
                            initial_state=previous, save_at=[t + s for s in saves])
            previous, t = sol, t + window
            means = {p: x.flatten(2).mean(-1).double() if x.dim() > 2 else x.double()
                     for p, x in sol.states.items()}                    # (time, batch)
            drift = {p: float((m[-1] - m[0]).abs().max()) for p, m in means.items()}
            level = {p: float(m.abs().max()) for p, m in means.items()}
            steady = all(drift[p] <= rtol * level[p] + atol for p in means)
    if not steady:
        worst = max(drift, key=lambda p: drift[p] / (level[p] + atol))
        warnings.warn(f"the network did not settle on the background within {max_time:g} ms: population "
                      f"{worst!r} still changes by {drift[worst]:.3g} ({100 * drift[worst] / max(level[worst], atol):.2g} "
                      f"% of its level {level[worst]:.3g}) over the last {window:g} ms; a baseline "
                      "read from it drifts (raise max_time, or check the network's stability with "
                      "dn.models.summary(net))", BaselineDriftWarning, stacklevel=2)
    return Settled(state={p: x.clone() for p, x in previous.final_state.items()}, time=t, drift=drift,
                   level=level, steady=steady)


def run_protocol(network, protocol, *, dt: float, solver="euler", record: Record | None = None,
                 store=None, overwrite: bool = False, progress: bool | None = None,
                 t_end: float | None = None, attrs: dict | None = None, initial_state=None
                 ) -> SimulationResult:
    """Simulate ``network`` through ``protocol`` (a labelled stimulus with ``t_end``) and record it.

    ``record`` defaults to the mean over units of every population at every step (the
    population time course that stands in for an ECoG broadband signal). ``initial_state``:
    e.g. :func:`settle`'s state on the protocol's background.
    """
    t_end = t_end if t_end is not None else getattr(protocol, "t_end", None)
    if t_end is None:
        raise ConfigurationError("the protocol has no t_end; pass t_end= (ms)")
    record = record if record is not None else Record(reduce="mean")
    meta = {"experiment": getattr(protocol, "name", type(protocol).__name__),
            "onset_ms": getattr(protocol, "onset", None)}
    meta.update(attrs or {})
    with torch.no_grad():
        return simulate(network, protocol, t_end=float(t_end), dt=dt, solver=solver, record=record,
                        store=store, overwrite=overwrite, progress=progress, attrs=meta,
                        initial_state=initial_state)


def groen2022_experiments(network, images: Tensor, out_dir, *, dt: float, solver="euler",
                          kinds: Sequence[str] = GROEN_KINDS, record: Record | None = None,
                          overwrite: bool = False, progress: bool | None = None,
                          background="mean", onset: float = 100.0, settle_max: float | None = 3000.0
                          ) -> dict[str, Path]:
    """Run the ``kinds`` of Groen et al. (2022) (contrast, duration, repetition) on ``images``
    (``(N, C, H, W)``, already normalised as the network expects) and write one archive per
    kind, ``out_dir/groen2022-<kind>.zarr``. Returns ``{kind: path}``.

    ``background``: the screen between stimuli in the units the network is fed (default
    ``"mean"``: each image's mean luminance, so that a contrast change keeps the mean; see
    :func:`dynode.stimuli.groen2022`). ``settle_max`` (ms): before each experiment the
    network runs on the background alone until steady (:func:`settle`, warning with the drift
    it measured if it is not steady after this long); the experiment starts from that state,
    so its baseline (the ``onset`` ms before the stimulus, default 100) is flat. ``None``
    starts from the network's initial state instead. Epochs end 1.2 s after the onset.
    Use a ``dt`` that divides the durations (1 ms) for exact pulse lengths.

    ``record`` defaults to the population mean; unless it names populations, a
    :class:`~dynode.Network`'s areas are recorded (``net.areas()``: not the normalization pools,
    adaptation or inhibitory populations that components add)."""

    record = record if record is not None else Record(reduce="mean")
    if record.populations is None and isinstance(network, Network):
        record = replace(record, populations=list(network.areas()))

    unknown = [k for k in kinds if k not in GROEN_KINDS]
    if unknown:
        raise ConfigurationError(f"unknown Groen 2022 experiments {unknown}; choose from {list(GROEN_KINDS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in kinds:
        protocol = groen2022(kind, images, background=background, onset=onset)
        path = out_dir / f"groen2022-{kind}.zarr"
        state, extra = None, {}
        if settle_max is not None:
            settled = settle(network, protocol(0.0), dt=dt, solver=solver, max_time=settle_max)
            state, extra = settled.state, settled.attrs()
        run_protocol(network, protocol, dt=dt, solver=solver, record=record, store=path,
                     overwrite=overwrite, progress=progress, initial_state=state, attrs=extra)
        paths[kind] = path
    return paths


def recovery_after_offset(network, images: Tensor, *, dt: float, solver="euler", onset: float = 100.0,
                          duration: float = 500.0, t_end: float = 3500.0, background="blank",
                          tail: float = 100.0) -> dict[str, dict[str, float]]:
    r"""Does activity return to its rest state after a stimulus? A long run (default 3.5 s) from
    the settled state: ``images`` shown at full contrast from ``onset`` for ``duration`` ms,
    then the ``background`` until ``t_end``.

    Returns per area (a :class:`~dynode.Network`'s ``areas()``, else every population) of the
    population mean rate ``m(t)`` (mean over units and images): ``peak`` ``max |m - m_0|``
    (``m_0`` the rest level before the onset), ``final`` ``max |m - m_0|`` over the last ``tail``
    ms, and ``final_to_peak`` their ratio (``nan`` when there is no response).
    """

    if not onset + duration + tail <= t_end:
        raise ConfigurationError(f"recovery_after_offset: t_end={t_end} ms leaves no {tail} ms after the "
                                 f"offset at {onset + duration} ms")
    protocol = present(images, onset=onset, duration=duration, background=background, t_end=t_end)
    settled = settle(network, protocol(0.0), dt=dt, solver=solver)
    every = max(1, round(10.0 / dt)) * dt
    n = int(round(t_end / every))
    with torch.no_grad():
        sol = integrate(network, protocol, t_end=t_end, dt=dt, solver=solver, initial_state=settled.state,
                        save_at=[i * every for i in range(n + 1)])
    names = network.areas() if isinstance(network, Network) else tuple(sol.states)
    t = sol.ts.numpy()
    out = {}
    for name in names:
        x = sol.states[name]
        m = x.flatten(2).mean(-1).mean(-1).double() if x.dim() > 2 else x.double().mean(-1)
        rest = float(m[t < onset].mean())
        dev = (m - rest).abs()
        peak, final = float(dev.max()), float(dev[t >= t_end - tail].max())
        out[name] = {"peak": peak, "final": final, "final_to_peak": final / peak if peak > 0 else math.nan}
    return out

r"""Temporal envelopes: batched piecewise-linear functions of time in ms.

An :class:`Envelope` is a per-sample scalar ``e_b(t)`` (``b`` indexes the batch) that is
linear on each interval between its knots ``k_1 < k_2 < ... < k_m``:

.. math:: e_b(t) = a_{j,b} + s_{j,b}\, t \quad\text{for } k_j \le t < k_{j+1},

with ``k_0 = -inf`` and ``k_{m+1} = +inf``; the first and last pieces are constant
(``s = 0``). Envelopes are **right-continuous**: at a knot the value is the right piece's
(a pulse is on at exactly its onset and off at exactly its offset).

Knots are canonical: a knot is kept only if the function changes there for at least one
sample, either by a **jump** (the value is discontinuous) or by a **kink** (the value is
continuous but the slope changes, e.g. the corners of a ramp). :attr:`Envelope.breakpoints`
lists both (every knot), because a solver should end its steps at kinks too (a higher-order
method loses its order across a kink); :attr:`Envelope.jumps` and :attr:`Envelope.kinks`
separate them. A piecewise-constant envelope has no kinks, so its breakpoints are exactly
its discontinuities.

Building blocks (every time in ms; per-sample values may be given as sequences, which makes
a batch of conditions): :func:`constant`, :func:`step`, :func:`pulse`, :func:`pulse_train`,
:func:`two_pulses`, :func:`ramp`, :func:`pattern`; combine with ``+`` (sum), ``*`` (scaling
by a number or per-sample values), :func:`stack` (concatenate batches), :func:`sequence`
(one after the other) and :meth:`Envelope.shift`.

Evaluation (``env(t)`` -> tensor ``(batch,)``) finds the active piece by ``bisect`` on the
knots; a constant piece returns a precomputed tensor (no allocation per call).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from dynode.errors import ConfigurationError

__all__ = ["Envelope", "constant", "step", "pulse", "pulse_train", "two_pulses", "ramp", "pattern",
           "stack", "sequence"]

_TOL = 1e-12


def _vec(x, name: str) -> np.ndarray:
    """A per-sample vector (1-D float64) from a number or a sequence."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    arr = np.atleast_1d(np.asarray(x, dtype=np.float64))
    if arr.ndim != 1:
        raise ConfigurationError(f"{name} must be a number or a 1-D sequence (one per sample), "
                                 f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigurationError(f"{name} must be finite, got {arr.tolist()}")
    return arr


def _broadcast(**values) -> tuple[int, list[np.ndarray]]:
    """The per-sample vectors (:func:`_vec`, named by their keyword) broadcast to one length."""
    vecs = {k: _vec(v, k) for k, v in values.items()}
    sizes = {k: len(v) for k, v in vecs.items() if len(v) != 1}
    if len(set(sizes.values())) > 1:
        raise ConfigurationError(f"per-sample parameters have different lengths: {sizes}; give "
                                 "each as a number or as a sequence of the same length")
    n = next(iter(sizes.values()), 1)
    return n, [np.broadcast_to(v, (n,)).copy() for v in vecs.values()]


class Envelope:
    """A batched piecewise-linear function of time (ms); see the module docstring.

    Parameters
    ----------
    knots : sorted times (ms) of the piece boundaries, length ``m``.
    offset, slope : arrays ``(m + 1, batch)``: piece ``j`` is ``offset[j] + slope[j] * t``;
        ``slope[0]`` and ``slope[m]`` must be zero. Redundant knots are removed.
    """

    def __init__(self, knots, offset, slope=None, *, dtype=torch.float32, device=None):
        knots = np.asarray(knots, dtype=np.float64).reshape(-1)
        offset = np.asarray(offset, dtype=np.float64)
        if offset.ndim == 1:
            offset = offset[:, None]
        slope = np.zeros_like(offset) if slope is None else np.asarray(slope, dtype=np.float64)
        if slope.ndim == 1:
            slope = slope[:, None]
        m = len(knots)
        if offset.shape != slope.shape or offset.shape[0] != m + 1 or offset.shape[1] < 1:
            raise ConfigurationError(f"Envelope: offset and slope must have shape ({m + 1}, batch) "
                                     f"for {m} knots, got {offset.shape} and {slope.shape}")
        if np.any(np.diff(knots) <= 0) or not np.all(np.isfinite(knots)):
            raise ConfigurationError(f"Envelope knots must be finite and strictly increasing, got "
                                     f"{knots.tolist()}")
        if np.any(slope[0] != 0) or np.any(slope[-1] != 0):
            raise ConfigurationError("Envelope: the pieces before the first and after the last knot "
                                     "must be constant (slope 0)")
        # canonical form: drop knots where nothing changes for any sample
        keep = []
        for i, k in enumerate(knots):
            left_v, right_v = offset[i] + slope[i] * k, offset[i + 1] + slope[i + 1] * k
            scale = 1.0 + np.abs(left_v).max() + np.abs(right_v).max()
            same_v = np.all(np.abs(left_v - right_v) <= _TOL * scale)
            same_s = np.all(np.abs(slope[i] - slope[i + 1]) <= _TOL * (1.0 + np.abs(slope[i]).max()))
            keep.append(not (same_v and same_s))
        keep = np.asarray(keep, dtype=bool)
        pieces = np.concatenate([[True], keep])
        self._knots = knots[keep]
        self._offset = offset[pieces]
        self._slope = slope[pieces]
        self.dtype, self.device = dtype, torch.device(device) if device is not None else torch.device("cpu")
        jumps, kinks = [], []
        for i, k in enumerate(self._knots):
            lv = self._offset[i] + self._slope[i] * k
            rv = self._offset[i + 1] + self._slope[i + 1] * k
            scale = 1.0 + np.abs(lv).max() + np.abs(rv).max()
            (kinks if np.all(np.abs(lv - rv) <= _TOL * scale) else jumps).append(float(k))
        self.jumps: tuple[float, ...] = tuple(jumps)
        """Times (ms) where the value jumps for at least one sample."""
        self.kinks: tuple[float, ...] = tuple(kinks)
        """Times (ms) where the value is continuous but the slope changes (ramp corners)."""
        self.breakpoints: tuple[float, ...] = tuple(float(k) for k in self._knots)
        """Every knot: jumps and kinks, sorted (ms)."""
        self._knot_list = list(self.breakpoints)
        self._constant_piece = [bool(np.all(s == 0)) for s in self._slope]
        self._levels: list[Tensor | None] = [
            torch.as_tensor(o, dtype=dtype, device=self.device) if c else None
            for o, c in zip(self._offset, self._constant_piece)]
        # sloped pieces are evaluated as value-at-piece-start + slope * (t - start), with
        # t - start in float64: no cancellation between a large offset and slope * t
        self._starts = [0.0] + list(self.breakpoints)
        start_vals = self._offset + self._slope * np.asarray(self._starts)[:, None]
        self._a = torch.as_tensor(start_vals, dtype=dtype, device=self.device)
        self._s = torch.as_tensor(self._slope, dtype=dtype, device=self.device)

    # ------------------------------------------------------------------ evaluation
    @property
    def batch_size(self) -> int:
        return self._offset.shape[1]

    @property
    def piecewise_constant(self) -> bool:
        return all(self._constant_piece)

    def piece(self, t: float) -> int:
        """Index of the piece active at ``t`` (right-continuous)."""
        return bisect_right(self._knot_list, t)

    def piece_is_constant(self, j: int) -> bool:
        return self._constant_piece[j]

    def __call__(self, t: float) -> Tensor:
        """Values at ``t`` (ms) as a tensor ``(batch,)``. Constant pieces return a cached tensor."""
        j = bisect_right(self._knot_list, t)
        level = self._levels[j]
        if level is not None:
            return level
        return torch.add(self._a[j], self._s[j], alpha=float(t) - self._starts[j])

    def values(self, t) -> np.ndarray:
        """Exact float64 values at the times ``t`` (any shape) -> array ``(*t.shape, batch)``."""
        t = np.asarray(t, dtype=np.float64)
        j = np.searchsorted(self._knots, t, side="right")
        return self._offset[j] + self._slope[j] * t[..., None]

    def to(self, device=None, dtype=None) -> "Envelope":
        return Envelope(self._knots, self._offset, self._slope,
                        dtype=dtype if dtype is not None else self.dtype,
                        device=device if device is not None else self.device)

    # ------------------------------------------------------------------ algebra
    def _rep_pieces(self, knots: np.ndarray) -> np.ndarray:
        """Index of this envelope's piece on each piece of the union grid ``knots``."""
        starts = np.concatenate([[-np.inf], knots])
        return np.searchsorted(self._knots, starts, side="right")

    def _on(self, knots: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self._rep_pieces(knots)
        off, sl = self._offset[idx], self._slope[idx]
        if off.shape[1] != batch:
            if off.shape[1] != 1:
                raise ConfigurationError(f"cannot combine envelopes of batch {off.shape[1]} and {batch}")
            off, sl = np.repeat(off, batch, axis=1), np.repeat(sl, batch, axis=1)
        return off, sl

    def __add__(self, other) -> "Envelope":
        if isinstance(other, (int, float)):
            return Envelope(self._knots, self._offset + float(other), self._slope,
                            dtype=self.dtype, device=self.device)
        if not isinstance(other, Envelope):
            return NotImplemented
        b1, b2 = self.batch_size, other.batch_size
        if b1 != b2 and 1 not in (b1, b2):
            raise ConfigurationError(f"cannot add envelopes of batch {b1} and {b2} (one must be 1 or "
                                     "both equal)")
        batch = max(b1, b2)
        knots = np.union1d(self._knots, other._knots)
        o1, s1 = self._on(knots, batch)
        o2, s2 = other._on(knots, batch)
        return Envelope(knots, o1 + o2, s1 + s2, dtype=self.dtype, device=self.device)

    __radd__ = __add__

    def __mul__(self, factor) -> "Envelope":
        """Scale by a number or by per-sample factors (a sequence of length batch)."""
        f = _vec(factor, "envelope factor")
        off, sl = self._offset, self._slope
        if len(f) != 1 and off.shape[1] == 1:
            off, sl = np.repeat(off, len(f), axis=1), np.repeat(sl, len(f), axis=1)
        elif len(f) not in (1, off.shape[1]):
            raise ConfigurationError(f"{len(f)} factors for an envelope of batch {off.shape[1]}")
        return Envelope(self._knots, off * f, sl * f, dtype=self.dtype, device=self.device)

    __rmul__ = __mul__

    def __neg__(self) -> "Envelope":
        return self * -1.0

    def __sub__(self, other) -> "Envelope":
        return self + (-other if isinstance(other, Envelope) else -float(other))

    def shift(self, delta: float) -> "Envelope":
        """``e(t - delta)``: the envelope delayed by ``delta`` ms."""
        delta = float(delta)
        return Envelope(self._knots + delta, self._offset - self._slope * delta, self._slope,
                        dtype=self.dtype, device=self.device)

    def __repr__(self) -> str:
        kind = "piecewise-constant" if self.piecewise_constant else "piecewise-linear"
        return (f"Envelope({kind}, batch={self.batch_size}, jumps={list(self.jumps)}, "
                f"kinks={list(self.kinks)})")


# ---------------------------------------------------------------------- builders
def _from_segments(per_sample: list[list[tuple[float, float, float]]], before: np.ndarray) -> Envelope:
    """Each sample: a list of ``(start, stop, value)`` constant segments on top of ``before``.

    Segments of one sample must not overlap; between them the value is ``before[b]``.
    """
    knots = np.unique(np.array([x for segs in per_sample for s in segs for x in s[:2]
                                if math.isfinite(x)], dtype=np.float64))
    off = np.repeat(before[None, :], len(knots) + 1, axis=0).copy()
    starts = np.concatenate([[-np.inf], knots])
    for b, segs in enumerate(per_sample):
        for start, stop, value in segs:
            sel = (starts >= start) & (starts < stop)
            off[sel, b] = value
    return Envelope(knots, off, np.zeros_like(off))


def constant(value=1.0) -> Envelope:
    """``e(t) = value`` (per-sample values allowed). No breakpoints."""
    v = _vec(value, "value")
    return Envelope(np.zeros(0), v[None, :], np.zeros((1, len(v))))


def pulse(onset, duration, amplitude=1.0, baseline=0.0) -> Envelope:
    """``amplitude`` for ``onset <= t < onset + duration``, ``baseline`` otherwise.

    Any argument may be per sample (a sequence), which makes a batch of conditions.
    """
    n, (on, du, amp, base) = _broadcast(onset=onset, duration=duration, amplitude=amplitude, baseline=baseline)
    if np.any(du <= 0):
        raise ConfigurationError(f"pulse duration must be > 0 ms, got {du.tolist()}")
    return _from_segments([[(on[b], on[b] + du[b], amp[b])] for b in range(n)], base)


def step(onset, amplitude=1.0, baseline=0.0) -> Envelope:
    """``baseline`` before ``onset``, ``amplitude`` from ``onset`` on (a pulse that never ends)."""
    n, (on, amp, base) = _broadcast(onset=onset, amplitude=amplitude, baseline=baseline)
    return _from_segments([[(on[b], math.inf, amp[b])] for b in range(n)], base)


def pulse_train(onset, duration, count: int, *, period=None, gap=None, amplitude=1.0,
                baseline=0.0) -> Envelope:
    """``count`` pulses of ``duration`` ms, the first at ``onset``; consecutive onsets are
    ``period`` ms apart (or, equivalently, ``gap`` ms of baseline separate the pulses: give
    exactly one of ``period`` and ``gap``). Per-sample values allowed for every argument but
    ``count``."""
    if not (isinstance(count, int) and count >= 1):
        raise ConfigurationError(f"pulse_train count must be an int >= 1, got {count!r}")
    if (period is None) == (gap is None):
        raise ConfigurationError("pulse_train: give exactly one of period= (onset to onset, ms) "
                                 "and gap= (offset to next onset, ms)")
    du_ = _vec(duration, "duration")
    spacing = _vec(period, "period") if period is not None else None
    n, (on, du, amp, base, sp) = _broadcast(
        onset=_vec(onset, "onset"), duration=du_, amplitude=_vec(amplitude, "amplitude"),
        baseline=_vec(baseline, "baseline"),
        spacing=spacing if spacing is not None else _vec(gap, "gap"))
    if np.any(du <= 0):
        raise ConfigurationError(f"pulse duration must be > 0 ms, got {du.tolist()}")
    if period is None:
        if np.any(sp < 0):
            raise ConfigurationError(f"pulse_train gap must be >= 0 ms, got {sp.tolist()}")
        sp = sp + du
    elif np.any(sp < du):
        raise ConfigurationError(f"pulse_train period ({sp.tolist()} ms) must be >= the duration "
                                 f"({du.tolist()} ms) or the pulses overlap")
    segs = [[(on[b] + i * sp[b], on[b] + i * sp[b] + du[b], amp[b]) for i in range(count)]
            for b in range(n)]
    return _from_segments(segs, base)


def two_pulses(onset, duration, isi, amplitude=1.0, baseline=0.0) -> Envelope:
    """Two pulses of ``duration`` ms separated by an inter-stimulus interval ``isi`` ms
    (offset of the first to onset of the second). ``isi`` may be per sample."""
    return pulse_train(onset, duration, 2, gap=isi, amplitude=amplitude, baseline=baseline)


def ramp(start, stop, v0=0.0, v1=1.0) -> Envelope:
    """``v0`` before ``start``, linear from ``v0`` to ``v1`` on ``[start, stop]``, ``v1`` after.

    The value is continuous: ``start`` and ``stop`` are **kinks** (slope changes), listed in
    ``breakpoints`` and in ``kinks`` but not in ``jumps``."""
    n, (t0, t1, a, b) = _broadcast(start=start, stop=stop, v0=v0, v1=v1)
    if np.any(t1 <= t0):
        raise ConfigurationError(f"ramp stop must be > start, got start={t0.tolist()}, stop={t1.tolist()}")
    knots = np.unique(np.concatenate([t0, t1]))
    starts = np.concatenate([[-np.inf], knots])
    off = np.empty((len(knots) + 1, n))
    sl = np.zeros_like(off)
    for j, s in enumerate(starts):
        before, after = s < t0, s >= t1
        inside = ~before & ~after
        rate = (b - a) / (t1 - t0)
        off[j] = np.where(before, a, np.where(after, b, a - rate * t0))
        sl[j] = np.where(inside, rate, 0.0)
    return Envelope(knots, off, sl)


def pattern(bits: str, bin_ms: float, onset: float = 0.0, amplitude=1.0, baseline=0.0) -> Envelope:
    """A presentation pattern: character ``i`` of ``bits`` (``"1"`` on, ``"0"`` off) covers
    ``[onset + i * bin_ms, onset + (i + 1) * bin_ms)``; ``baseline`` before and after.

    ``pattern("1011", 10)`` is on for 0-10 ms, off for 10-20, on for 20-40 ms. Adjacent on
    bins form one pulse (no breakpoint between them)."""
    if not isinstance(bits, str) or not bits or set(bits) - {"0", "1"}:
        raise ConfigurationError(f"pattern must be a non-empty string of '0' and '1', got {bits!r}")
    bin_ms = float(bin_ms)
    if not bin_ms > 0:
        raise ConfigurationError(f"pattern bin_ms must be > 0, got {bin_ms}")
    n, (amp, base) = _broadcast(amplitude=amplitude, baseline=baseline)
    return _from_segments([[(onset + i * bin_ms, onset + (i + 1) * bin_ms, amp[b]) for i, c in enumerate(bits)
                            if c == "1"] for b in range(n)], base)


def stack(envelopes: Sequence[Envelope]) -> Envelope:
    """Concatenate envelopes along the batch (one condition after another)."""
    envelopes = list(envelopes)
    if not envelopes:
        raise ConfigurationError("stack needs at least one envelope")
    knots = envelopes[0]._knots
    for e in envelopes[1:]:
        knots = np.union1d(knots, e._knots)
    parts = [e._on(knots, e.batch_size) for e in envelopes]
    return Envelope(knots, np.concatenate([p[0] for p in parts], axis=1),
                    np.concatenate([p[1] for p in parts], axis=1), dtype=envelopes[0].dtype,
                    device=envelopes[0].device)


def sequence(envelopes: Sequence[Envelope], durations: Sequence[float], start: float = 0.0) -> Envelope:
    """One envelope after the other: envelope ``i``, in its own time (its ``t = 0`` at the window's
    start), is shown on ``[start + sum(durations[:i]), start + sum(durations[:i+1]))``.

    Before the first window the value is the first envelope's initial level (its value at
    ``-inf``); after the last window it is the last envelope's final level (at ``+inf``)."""
    envelopes, durations = list(envelopes), [float(d) for d in durations]
    if not envelopes or len(envelopes) != len(durations):
        raise ConfigurationError("sequence needs as many durations as envelopes (at least one)")
    if any(not d > 0 for d in durations):
        raise ConfigurationError(f"sequence durations must be > 0 ms, got {durations}")
    sizes = {e.batch_size for e in envelopes} - {1}
    if len(sizes) > 1:
        raise ConfigurationError(f"sequence: envelopes have batches {sorted(sizes)} (must be equal or 1)")
    batch = max(e.batch_size for e in envelopes)
    bounds = np.cumsum([float(start)] + durations)
    knots = set(bounds.tolist())
    for e, lo, hi in zip(envelopes, bounds[:-1], bounds[1:]):
        knots.update(float(k + lo) for k in e._knots if lo < k + lo < hi)
    knots_arr = np.array(sorted(knots), dtype=np.float64)
    m = len(knots_arr)
    off, sl = np.empty((m + 1, batch)), np.zeros((m + 1, batch))

    def row(x: np.ndarray) -> np.ndarray:
        return np.broadcast_to(x, (batch,))

    off[0], off[m] = row(envelopes[0]._offset[0]), row(envelopes[-1]._offset[-1])
    for j in range(1, m):
        mid = 0.5 * (knots_arr[j - 1] + knots_arr[j])  # robust to rounding of shifted knots
        i = int(np.searchsorted(bounds, mid, side="right")) - 1
        e, lo = envelopes[i], bounds[i]
        p = int(np.searchsorted(e._knots, mid - lo, side="right"))
        off[j] = row(e._offset[p] - e._slope[p] * lo)  # e(t - lo) = o + s (t - lo)
        sl[j] = row(e._slope[p])
    return Envelope(knots_arr, off, sl, dtype=envelopes[0].dtype, device=envelopes[0].device)

"""Divergence checks that do not synchronise with the device every step.

:meth:`Guard.check` reduces each population to its largest magnitude on the device and reads
all of them in one transfer. NaN propagates through the reduction, so one read catches both
NaN/inf and blow-up (``|r| > max_abs``). The fixed-step solvers call it every ``check_every``
steps and at the end, the torchdiffeq/torchode adapters after every segment; the adaptive
solvers read the peaks with their error norms every step and call it only when one is not
``<= max_abs``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from dynode.errors import DivergenceError

__all__ = ["Guard", "magnitudes"]


def magnitudes(tensors: Iterable[Tensor]) -> Tensor:
    """``max |x|`` of each tensor, stacked into one 1-D tensor on the device (no host read).

    Computed as ``max(max x, -min x)`` from one ``aminmax`` pass, which allocates nothing the
    size of ``x``. NaN propagates through both and ``-(-inf) = inf``, so ``isfinite`` of the
    result says which tensors hold only finite values -- at a fraction of the cost of
    ``isfinite(x).all()``, which builds a boolean tensor the size of ``x`` (about 8x on the
    CPU for a conv network's weights). An empty tensor counts as 0."""
    def peak(x: Tensor) -> Tensor:
        lo, hi = torch.aminmax(x.detach())
        return torch.maximum(hi, -lo)

    with torch.no_grad():
        return torch.stack([peak(x) if x.numel() else x.new_zeros(()) for x in tensors])


class Guard:
    def __init__(self, max_abs: float | None, taus: Mapping[str, float], dt: float | None):
        self.max_abs = math.inf if max_abs is None else float(max_abs)
        self.taus = dict(taus)
        self.dt = dt

    def check(self, state: Mapping[str, Tensor], t_prev: float, t: float) -> None:
        """Raise :class:`DivergenceError` if any population is non-finite or exceeds max_abs."""
        for name, peak in zip(state, magnitudes(state.values()).tolist()):
            if not peak <= self.max_abs:  # also true for NaN
                tau = self.taus.get(name)
                ratio = self.dt / tau if (tau and self.dt) else None
                what = "became non-finite" if not math.isfinite(peak) else f"exceeded |r| = {self.max_abs:g}"
                advice = (f"dt/tau = {ratio:.3g}; " if ratio is not None else "")
                advice += ("reduce dt (explicit Euler is unstable for dt/tau > 2), "
                           if ratio is not None and ratio > 1 else "")
                advice += ("check the recurrent weights' gain (spectral radius), tau and the input "
                           "scale, or raise max_abs if such rates are meant")
                raise DivergenceError(
                    f"population {name!r} {what} between t = {t_prev:g} ms and t = {t:g} ms; {advice}",
                    population=name, t_range=(t_prev, t), dt_over_tau=ratio)

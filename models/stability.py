r"""Stability report: spectral radii of recurrent operators and ``dt / tau``.

For a population with a recurrent connection ``W`` (its operator, linearised at ``r = 0``:
``J v = d/de W(e v)|_{e=0}``), the linearised dynamics ``tau dr/dt = -r + Phi'(0) W r`` are
stable when every eigenvalue ``lambda`` of ``Phi'(0) W`` has ``Re(lambda) < 1``; the spectral
radius ``rho(W) = max |lambda|`` is the usual summary (``rho * Phi'(0) < 1`` suffices).
``rho`` is estimated by power iteration on the operator itself (no matrix is formed):

.. math:: v_{k+1} = J v_k / \|J v_k\|, \qquad
          \hat\rho = \exp\Big(\frac{1}{m}\sum_{k > K-m} \log \|J v_k\|\Big)

with ``J v = op(v) - op(0)`` for operators known to be affine (convolutions, the recurrence
types, adapters) and forward-mode AD otherwise
(the geometric mean of the growth factors over the last ``m`` iterations, which converges to
``rho`` also when the dominant eigenvalues are a complex pair or ``+-lambda``).

The report also lists, per population, the normalization, adaptation and inhibitory loops
acting on it (:func:`describe_loops`), e.g. ``V1 <- V1_norm (divisive, tau 30 ms, delay 4 ms)``.

The explicit update is stable for ``dt / tau`` below the solver's limit (2 for Euler on a
decaying mode), reported next to ``rho``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from dynode.adapters import Adapter, Resize
from dynode.models.ei import SignedConv
from dynode.models.normalization import Divide, Pool, modulators
from dynode.models.recurrence import LocalRecurrence, SelfRecurrence, SumOf

__all__ = ["spectral_radius", "PopulationReport", "stability_report", "summary", "describe_loops"]


def is_affine(op: nn.Module) -> bool:
    """Whether ``op`` is known to be affine (then ``J v = op(v) - op(0)`` exactly)."""

    if isinstance(op, (nn.Conv2d, nn.Linear, nn.Identity, nn.AvgPool2d, SelfRecurrence,
                       LocalRecurrence, Resize, SignedConv)):
        return True
    if isinstance(op, (nn.Sequential, SumOf, Adapter)):
        return all(is_affine(m) for m in op.children())
    return False


def spectral_radius(op: nn.Module, shape, *, iters: int = 100, tol: float = 1e-4, seed: int = 0,
                    device=None, dtype=None) -> float:
    """Spectral radius of ``op`` (linearised at 0) acting on per-sample ``shape``.

    Stops when two estimates 10 iterations apart agree to ``tol`` (relative) or after
    ``iters`` iterations; raise ``iters`` for slowly converging (complex-dominant) spectra.
    """
    p = next(op.parameters(), None)
    device = device if device is not None else (p.device if p is not None else None)
    dtype = dtype if dtype is not None else (p.dtype if p is not None and p.is_floating_point()
                                             else torch.get_default_dtype())
    g = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn((1, *shape), generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    v = v / v.norm()
    zero = torch.zeros_like(v)
    logs: list[Tensor] = []
    last = math.nan
    affine = is_affine(op)
    with torch.no_grad():
        offset = op(zero)

        def apply(x: Tensor) -> Tensor:
            if affine:
                return op(x) - offset
            try:
                with warnings.catch_warnings():  # torch's forward-AD setup uses a deprecated jit call
                    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
                    with fwAD.dual_level():
                        tangent = fwAD.unpack_dual(op(fwAD.make_dual(zero, x))).tangent
                if tangent is not None:
                    return tangent
                return torch.zeros_like(x)  # the operator does not depend on its input
            except (RuntimeError, NotImplementedError):  # modules without forward-AD rules: secant
                return op(x) - offset  # (exact for affine operators)

        for k in range(1, iters + 1):
            w = apply(v)
            n = w.norm()
            logs.append(torch.log(n.clamp_min(1e-300)))
            if not bool(n > 0):
                return 0.0
            v = w / n
            if k % 10 == 0 and k >= 20:
                m = k // 2
                est = float(torch.stack(logs[-m:]).mean().exp())
                if abs(est - last) <= tol * max(est, 1e-12):
                    return est
                last = est
    m = max(1, len(logs) // 2)
    return float(torch.stack(logs[-m:]).mean().exp())


@dataclass(frozen=True)
class PopulationReport:
    name: str
    shape: tuple[int, ...]
    tau: float
    dt_over_tau: float | None
    params: int
    incoming: tuple[tuple[str, float, int], ...]  # (source, delay ms, operator parameters)
    spectral_radius: float | None  # of the self connection's operator; None without one
    loops: tuple[str, ...] = ()  # normalization, adaptation and inhibition acting on it, in words
    learnt: tuple[str, ...] = ()  # its learnt quantities and their bounds, e.g. "tau in [2.5, 10] ms"


def describe_loops(net, name: str) -> tuple[str, ...]:
    """The normalization, adaptation and inhibitory loops acting on population ``name``, e.g.
    ``"V1 <- V1_norm (divisive, tau 30 ms, delay 4 ms, pool channel, sigma 1)"``."""

    pops = net.populations
    out = []
    comb = pops[name].combine
    sigmas = {}
    while comb is not None and hasattr(comb, "source"):
        if isinstance(comb, Divide) and comb.kind == "divisive":
            sigmas[comb.source] = float(comb.sigma.detach())
        comb = comb.inner
    for src, kind in modulators(net, name):
        pool = pops[src]
        feed = pool.incoming[name] if name in pool.incoming else None
        extra = f", pool {feed.pool}" if isinstance(feed, Pool) else ""
        if src in sigmas:
            extra += f", sigma {sigmas[src]:.3g}"
        out.append(f"{name} <- {src} ({kind}, tau {pool.tau_min():g} ms, delay "
                   f"{pool.delay_of(name) if name in pool.delays else 0.0:g} ms{extra})")
    for src, op in pops[name].incoming.items():
        if src != name and isinstance(op, SignedConv) and op.sign < 0:
            back = pops[src].delays.get(name)
            via = "" if back is None else f"; {src} <- {name} @ {back:g} ms"
            out.append(f"{name} <- {src} (inhibitory, tau {pops[src].tau_min():g} ms, delay "
                       f"{pops[name].delay_of(src):g} ms, {pops[src].shape[0]} channels{via})")
    return tuple(out)


def _count(module: nn.Module, seen: set[int]) -> int:
    n = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def stability_report(net, dt: float | None = None, **power_options) -> list[PopulationReport]:
    """One :class:`PopulationReport` per population of ``net`` (a :class:`dynode.Network`)."""
    rows = []
    seen: set[int] = set()
    for name, pop in net.populations.items():
        tau = pop.tau_min()
        incoming = []
        for src, op in pop.incoming.items():
            incoming.append((src, pop.delay_of(src), sum(p.numel() for p in op.parameters())))
        learnt = tuple(f"{what} in [{b.lo:g}, {b.hi:g}] ms" for what, b in
                       ((("tau", pop.learnt_tau),) if pop.tau_bounds is not None else ())
                       + tuple((f"delay from {src}", b) for src, b in pop.learnt_delays.items()))
        rho = None
        if name in pop.incoming:
            rho = spectral_radius(pop.incoming[name], pop.shape, **power_options)
        rows.append(PopulationReport(name=name, shape=pop.shape, tau=tau,
                                     dt_over_tau=None if dt is None else dt / tau,
                                     params=_count(pop, seen), incoming=tuple(incoming),
                                     spectral_radius=rho, loops=describe_loops(net, name), learnt=learnt))
    return rows


def summary(net, dt: float | None = None, *, file=None, **power_options) -> str:
    """Print (and return) a text table of :func:`stability_report` (populations, shapes, taus,
    dt/tau, connections with delays and parameter counts, the spectral radius of each recurrent
    operator) plus inputs, readout and totals. ``dt`` defaults to ``net.protocol.dt``."""
    dt = dt if dt is not None else net.protocol.dt
    rows = stability_report(net, dt, **power_options)
    lines = []
    for name, shape in net.input_shapes().items():
        lines.append(f"input {name}: shape {shape}")
    head = f"{'population':<12} {'shape':<16} {'tau ms':>7} {'dt/tau':>7} {'params':>10} {'rho(W_rec)':>10}  incoming (source @ delay ms [params])"
    lines += [head, "-" * len(head)]
    for r in rows:
        dtt = "" if r.dt_over_tau is None else f"{r.dt_over_tau:.3g}"
        rho = "-" if r.spectral_radius is None else f"{r.spectral_radius:.4g}"
        inc = ", ".join(f"{s} @ {d:g} [{p}]" for s, d, p in r.incoming)
        lines.append(f"{r.name:<12} {str(r.shape):<16} {r.tau:>7.4g} {dtt:>7} {r.params:>10} {rho:>10}  {inc}")
    loops = [loop for r in rows for loop in r.loops]
    if loops:
        lines.append("loops:")
        lines += [f"  {loop}" for loop in loops]
    learnt = [f"  {r.name}: {what}" for r in rows for what in r.learnt]
    if learnt:
        lines.append("learnt time constants and delays (values above are the current ones):")
        lines += learnt
    ro = getattr(net, "readout", None)
    if ro is not None:
        lines.append(f"readout: {ro.extra_repr()}, {ro.num_classes} classes, "
                     f"{sum(p.numel() for p in ro.parameters())} params")
    total = sum(p.numel() for p in net.parameters())
    lines.append(f"total parameters: {total}")
    text = "\n".join(lines)
    print(text, file=file)
    return text

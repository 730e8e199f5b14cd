r"""Brownian paths for noise in the dynamics: reproducible, batch-independent, consistent across ``dt``.

A noisy population ``p`` (``add_population(..., noise=sigma)``) follows

.. math:: \tau\, dr = (-r + \Phi(u))\, dt + \sigma \sqrt{2 \tau}\, dW,

i.e. ``dr = f(t, r) dt + g dW`` with ``g = sigma sqrt(2 / tau)`` (:func:`noise_coefficients`), ``W``
a standard Wiener process per unit (independent across units, populations and samples), time in
ms. A population relaxing linearly (``Phi(u) = 0``) is then an Ornstein-Uhlenbeck process with
stationary variance ``g^2 tau / 2 = sigma^2``: ``sigma`` is the stationary standard deviation of
the rate, in the rate's units. The noise is additive (``g`` does not depend on ``r``), so the Ito
and Stratonovich readings are the same equation.

The path (:class:`BrownianPath`)
---------------------------------
Every value is a deterministic function of a key, so a run is reproducible bit for bit and does
not depend on what else is in the batch:

* each sample has a 64-bit key (:func:`sample_keys`: from ``integrate(..., seed=s)`` sample ``b``
  gets ``key(s, b)``; ``Solution.seeds`` holds the keys, and ``seed=sol.seeds[i:i+1]`` replays
  sample ``i`` alone);
* the unit's stream is ``mix(mix(key ^ population) + unit * GOLDEN)`` (``population``: the CRC-32
  of its name), and a normal number of node ``(k, node)`` of the path is Box-Muller on
  ``mix(stream + node_key)``, ``mix`` the SplitMix64 finaliser (a counter-based generator in
  64-bit integer tensor ops: no generator state, no host sync, the same on every device).

Time is cut into roots ``[k R, (k + 1) R]`` from ``t = 0 ms``, ``R = 8 L`` (``L`` in ``[1, 2)``
ms, below). ``W((k+1)R) - W(kR) = sqrt(R) Z_k``, independent across ``k``. Inside, the path is a
Brownian tree (as diffrax's ``VirtualBrownianTree``): an interval of length ``h`` whose increment
is ``X`` is halved by the Brownian bridge,

.. math:: X_{left} = X/2 + \tfrac{\sqrt{h}}{2} Z_{node}, \qquad X_{right} = X - X_{left},

exact in law (``W(mid)`` given both ends is ``N(mean, h/4)``). A step ``dt = R 2^{-j}`` is a leaf
at depth ``j``; ``dt = R 2^m`` sums ``2^m`` roots. So ``dt``, ``dt/2``, ``dt/4``, ...
(any ``dt`` times a power of two) see **the same path**: ``L = dt 2^{-e}`` is ``dt``'s binary
mantissa scaled into ``[1, 2)`` (``L = 1`` ms for ``dt = 1, 0.5, 0.25 ...``; ``1.6`` ms for
``dt = 0.1, 0.05, 0.2``), and the increment over a coarse step is exactly the sum of the fine
ones in law and to rounding. ``dt`` of another family (``0.1`` vs ``0.25``) sees another,
equally valid path. The grid is anchored at 0 ms, so ``t0`` must be a whole number of steps
(``integrate`` checks it), and a run continued at ``t1`` sees the path the whole run saw.

Cost: the leaves are made in order by a depth-first walk that keeps the pending right halves
(up to ``j`` state-sized tensors, ``j = log2(8 L / dt)``: 2 for ``dt = 2`` ms, 3 for 1 ms, 6 for
0.125 ms): one normal per state element per step (``2^j`` leaves cost ``2^j - 1`` bridges and
one root), plus ``j`` for the first step and for a jump (a checkpointed segment recomputed in
backward starts again from its root).
A normal costs about 2.5 ``torch.randn`` on the CPU (integer hashing + Box-Muller).
"""

from __future__ import annotations

import math
import numbers
import zlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from dynode.errors import ConfigurationError

__all__ = ["BrownianPath", "sample_keys", "noise_coefficients", "has_noise", "check_noise",
           "NOISY_SOLVERS"]

NOISY_SOLVERS = ("euler", "heun")  # the solvers that integrate noise (Euler-Maruyama, stochastic Heun)

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(x: int) -> int:
    """A 64-bit pattern as the int64 that holds it."""
    x &= _MASK
    return x - (1 << 64) if x >> 63 else x


def mix_int(x: int) -> int:
    """The SplitMix64 finaliser on a Python int (mod ``2^64``): the reference of :func:`mix`."""
    x &= _MASK
    x = ((x ^ (x >> 30)) * _M1) & _MASK
    x = ((x ^ (x >> 27)) * _M2) & _MASK
    return x ^ (x >> 31)


def mix(z: Tensor) -> Tensor:
    """The SplitMix64 finaliser on int64 tensors (products wrap mod ``2^64``; shifts are made
    logical by masking). ``tests/test_noise.py`` checks it against :func:`mix_int`."""
    z = z ^ ((z >> 30) & ((1 << 34) - 1))
    z = z * _signed(_M1)
    z = z ^ ((z >> 27) & ((1 << 37) - 1))
    z = z * _signed(_M2)
    return z ^ ((z >> 31) & ((1 << 33) - 1))


def sample_keys(seed, batch: int, device=None) -> Tensor:
    """The per-sample path keys (int64, shape ``(batch,)``) of ``integrate(..., seed=seed)``.

    ``seed`` an int: sample ``b`` gets ``mix(mix(seed) + b * GOLDEN)`` (so the keys of a batch
    of 8 start with those of a batch of 4). A 1-D int tensor or sequence of ``batch`` keys
    (e.g. ``Solution.seeds`` or a slice of it): used as they are."""
    if isinstance(seed, bool):
        raise ConfigurationError(f"seed must be an int or a 1-D sequence of per-sample keys (e.g. "
                                 f"Solution.seeds), got {seed!r}")
    if isinstance(seed, numbers.Integral):
        b = torch.arange(batch, dtype=torch.int64) * _signed(_GOLDEN)
        return mix(b + _signed(mix_int(int(seed)))).to(device)
    if isinstance(seed, Tensor):
        keys = seed.detach()
    elif isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)):
        if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seed):
            raise ConfigurationError("seed as a sequence must hold ints (one key per sample, e.g. "
                                     "Solution.seeds)")
        keys = torch.tensor([_signed(int(s)) for s in seed], dtype=torch.int64)
    else:
        raise ConfigurationError(f"seed must be an int or a 1-D sequence of per-sample keys (e.g. "
                                 f"Solution.seeds), got {type(seed).__name__}")
    if keys.dtype != torch.int64 or keys.dim() != 1:
        raise ConfigurationError(f"seed as a tensor must be 1-D int64 (one key per sample, e.g. "
                                 f"Solution.seeds), got {keys.dtype} of shape {tuple(keys.shape)}")
    if keys.shape[0] != batch:
        raise ConfigurationError(f"seed holds {keys.shape[0]} per-sample keys but the batch has {batch} "
                                 "samples; give one key per sample (e.g. sol.seeds[i:j] for samples i..j-1), "
                                 "or an int")
    return keys.to(device)


def check_noise(noise, shape: tuple[int, ...], what: str) -> float | Tensor:
    """A population's ``noise`` option, checked: a number ``sigma >= 0`` (finite; not a bool) or a
    real tensor of them broadcasting to ``shape`` (per channel ``(C, 1, 1)`` or per unit), returned
    as a float or a detached float32 copy. Multiplicative (state-dependent) noise is refused."""
    if isinstance(noise, str) or callable(noise) and not isinstance(noise, Tensor):
        raise ConfigurationError(
            f"{what}: noise must be the additive noise's sigma (a number >= 0, or a tensor per channel or "
            f"unit), got {noise!r}; multiplicative (state-dependent) noise is not implemented (it needs a "
            "stated Ito or Stratonovich reading and solvers for it): use additive noise")
    if isinstance(noise, Tensor):
        if noise.is_meta or noise.dtype == torch.bool or noise.is_complex() or not noise.is_floating_point():
            raise ConfigurationError(f"{what}: noise must be a real floating tensor of sigmas, got "
                                     f"{noise.dtype} on {noise.device}")
        try:
            torch.broadcast_shapes(noise.shape, shape)
        except RuntimeError:
            raise ConfigurationError(f"{what}: noise of shape {tuple(noise.shape)} does not broadcast to the "
                                     f"population shape {shape}; give it per channel (C, 1, 1) or per unit") from None
        if noise.numel() == 0 or not bool(torch.all(torch.isfinite(noise))) or not bool(torch.all(noise >= 0)):
            raise ConfigurationError(f"{what}: noise (sigma) must be finite and >= 0 in every entry")
        return noise.detach().to(dtype=torch.float32, copy=True)
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real):
        raise ConfigurationError(f"{what}: noise must be a number sigma >= 0 (or a tensor of them), got {noise!r}")
    noise = float(noise)
    if not (noise >= 0 and math.isfinite(noise)):
        raise ConfigurationError(f"{what}: noise (sigma, the stationary standard deviation of the rate) must "
                                 f"be finite and >= 0, got {noise}")
    return noise


def noise_coefficients(field) -> dict[str, float | Tensor]:
    """``{population: g}``, the coefficient of ``dW`` in ``dr = f dt + g dW`` of every noisy
    population (none: ``{}``). A field may declare ``noise_coefficients()``; otherwise each entry
    of ``field.populations`` that has ``diffusion()`` (:class:`dynode.population.Population`:
    ``sigma sqrt(2 / tau)``, a tensor in the graph of a learnt ``tau``) and is noisy counts."""
    declared = getattr(field, "noise_coefficients", None)
    if callable(declared):
        return dict(declared())
    pops = getattr(field, "populations", None)
    out: dict[str, float | Tensor] = {}
    if isinstance(pops, (Mapping, torch.nn.ModuleDict)):
        for name, pop in pops.items():
            g = pop.diffusion() if hasattr(pop, "diffusion") else None
            if g is not None:
                out[name] = g
    return out


def has_noise(field) -> bool:
    """Whether any population of ``field`` is noisy."""
    return bool(noise_coefficients(field))


def pending_states(dt: float) -> int:
    """How many state-sized tensors a :class:`BrownianPath` of step ``dt`` keeps between steps
    (the walk's pending halves; for the memory check)."""
    return max(base_interval(dt)[1] + _TOP, 0)


def base_interval(dt: float) -> tuple[float, int]:
    """``(L, j)`` with ``dt = L 2^{-j}`` and ``L`` in ``[1, 2)`` ms (exact: ``dt``'s mantissa)."""
    m, e = math.frexp(dt)  # dt = m 2^e, m in [0.5, 1)
    return 2.0 * m, 1 - e


_TOP = 3  # the tree's roots span 2^_TOP base intervals: steps up to 8 L cost one normal each


def _pop_key(name: str) -> int:
    return mix_int(zlib.crc32(name.encode()) + 0x5EED)


class BrownianPath:
    """The Brownian increments of a fixed-step run: ``increment(N)`` is ``W(t_{N+1}) - W(t_N)``
    for every noisy population, ``{name: (batch, *shape)}``, ``t_N = N dt`` (absolute index from
    0 ms). See the module docstring for the construction.

    ``keys``: per-sample keys ``(batch,)`` int64 on the run's device; ``shapes``: the noisy
    populations' per-sample shapes; ``dtype``: the state's (float64 paths use 52-bit uniforms,
    others float32 with 23/24-bit ones). ``block_bytes``: a root's leaves are made at once (one
    batch of kernels per root) where they take at most this much, else one by one by a
    depth-first walk; both give the same bits."""

    def __init__(self, keys: Tensor, shapes: Mapping[str, tuple[int, ...]], dt: float, dtype: torch.dtype,
                 block_bytes: int = 4 << 20):
        self.dt = float(dt)
        self.L, j = base_interval(self.dt)
        self.j = j + _TOP  # the leaves' depth below the roots, of length 2^_TOP L
        self.root_length = self.L * 2.0 ** _TOP
        self.shapes = dict(shapes)
        self.dtype = torch.float64 if dtype == torch.float64 else torch.float32
        batch, device = keys.shape[0], keys.device
        streams = []
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            units = torch.arange(n, dtype=torch.int64, device=device) * _signed(_GOLDEN)
            streams.append(mix(mix(keys ^ _signed(_pop_key(name)))[:, None] + units[None, :]))
        self.numel = sum(math.prod(s) for s in self.shapes.values())
        half = (self.numel + 1) // 2  # Box-Muller: one hash per pair of units
        stream = torch.cat(streams, 1) if len(streams) > 1 else streams[0]
        self._stream = stream[:, :half].contiguous()  # unit u pairs with u + half
        self._batch = batch
        self._next: int | None = None  # the leaf the depth-first walk gives next
        self._pending: list[tuple[int, int, int, Tensor]] = []  # (k, level, index, increment)
        # a root's leaves all at once where they take at most block_bytes (small states)
        self._whole = self.j > 0 and (1 << self.j) * batch * self.numel * self.dtype.itemsize <= block_bytes
        self._leaves: tuple[int, Tensor] | None = None
        if self._whole:  # the root's and every bridge's heap index (the left children), times GOLDEN
            nodes = [1] + [(1 << (level + 1)) + 2 * i for level in range(self.j) for i in range(1 << level)]
            self._nodes = torch.tensor(nodes, dtype=torch.int64, device=device) * _signed(_GOLDEN)

    # -- normals -------------------------------------------------------------------------
    def _normals(self, k: int, nodes: Sequence[int] | Tensor) -> Tensor:
        """Standard normals ``(len(nodes), batch, numel)`` of the nodes of root ``k``: one heap index,
        or a device tensor of ``index * GOLDEN`` (int64, wrapped)."""
        if isinstance(nodes, Tensor):  # node * GOLDEN on the device: no host-to-device copy (a sync)
            keys = mix(nodes + _signed(mix_int(k)))
            z = mix(self._stream[None] + keys[:, None, None])
        else:
            (node,) = nodes
            z = mix(self._stream + _signed(mix_int(mix_int(k) + node * _GOLDEN)))[None]
        count = z.shape[0]
        if self.dtype == torch.float64:
            u1 = ((z >> 12) & ((1 << 52) - 1)).to(torch.float64).add_(0.5).mul_(2.0 ** -52)
            th = (mix(z) >> 12) & ((1 << 52) - 1)
            th = th.to(torch.float64).mul_(2.0 ** -52 * 2.0 * math.pi)
        else:
            u1 = ((z >> 41) & ((1 << 23) - 1)).to(torch.float32).add_(0.5).mul_(2.0 ** -23)
            th = (z & ((1 << 24) - 1)).to(torch.float32).mul_(2.0 ** -24 * 2.0 * math.pi)
        r = u1.log_().mul_(-2.0).sqrt_()
        half = th.shape[-1]
        out = torch.empty((count, self._batch, 2 * half), dtype=self.dtype, device=th.device)
        torch.mul(r, torch.cos(th), out=out[..., :half])
        torch.mul(r, th.sin_(), out=out[..., half:])
        return out if 2 * half == self.numel else out[..., :self.numel]

    def _root(self, k: int) -> Tensor:
        return self._normals(k, (1,))[0].mul_(math.sqrt(self.root_length))

    def _halve(self, k: int, level: int, first: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """The bridge: nodes ``first, first + 1, ...`` of ``level`` (``x``: their increments, stacked
        along a leading dim, or one node's) -> their left and right halves."""
        h = self.root_length * 2.0 ** -level
        nodes = [(1 << (level + 1)) + 2 * i for i in range(first, first + (x.shape[0] if x.dim() == 3 else 1))]
        z = self._normals(k, nodes)  # keyed by the left children's heap indices
        z = z if x.dim() == 3 else z[0]
        left = torch.add(x * 0.5, z, alpha=0.5 * math.sqrt(h))
        return left, x - left

    # -- increments ----------------------------------------------------------------------
    def _root_leaves(self, k: int) -> Tensor:
        """Every leaf of root ``k`` at once, ``(2^j, batch, numel)``: the root's and all ``2^j - 1``
        bridges' normals in one batch of kernels, then level by level the same arithmetic per
        element as the depth-first walk (so the same bits); about ``30 + 4 j`` kernels per root
        instead of ``~35`` per leaf (for small states, where launches cost the time)."""
        z = self._normals(k, self._nodes)
        x = z[:1].mul_(math.sqrt(self.root_length))
        for level in range(self.j):
            h = self.root_length * 2.0 ** -level
            left = torch.add(x * 0.5, z[1 << level:2 << level], alpha=0.5 * math.sqrt(h))
            x = torch.stack((left, x - left), 1).flatten(0, 1)
        return x

    def _flat(self, N: int) -> Tensor:
        j = self.j
        if j <= 0:  # a step spans 2^-j roots
            span = 1 << -j
            total = self._root(N * span)
            for k in range(N * span + 1, (N + 1) * span):
                total = total + self._root(k)
            return total
        if self._whole:
            k = N >> j
            if self._leaves is None or self._leaves[0] != k:
                self._leaves = (k, self._root_leaves(k))
            return self._leaves[1][N & ((1 << j) - 1)]
        if N != self._next or not self._pending:
            self._pending = [(N >> j, 0, 0, self._root(N >> j))]
            target = N & ((1 << j) - 1)
        else:
            target = None
        k, level, index, x = self._pending.pop()
        while level < j:
            left, right = self._halve(k, level, index, x)
            level += 1
            go_right = target is not None and (target >> (j - level)) & 1
            if go_right:
                x, index = right, 2 * index + 1
            else:
                self._pending.append((k, level, 2 * index + 1, right))
                x, index = left, 2 * index
        self._next = N + 1
        return x

    def increment(self, N: int) -> dict[str, Tensor]:
        """``{name: W(t_{N+1}) - W(t_N)}`` (``(batch, *shape)`` views of one flat tensor)."""
        flat = self._flat(N)
        out, start = {}, 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            out[name] = flat[:, start:start + n].view(self._batch, *shape)
            start += n
        return out

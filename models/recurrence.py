r"""Recurrence operators: a layer's lateral connection ``W r`` on ``(B, C, H, W)`` rates.

Every operator maps ``(B, C, H, W)`` to ``(B, C, H, W)`` and is linear (no bias unless
``bias=True``), so inside ``tau dr/dt = -r + Phi(W r(t - d) + ...)`` it is exactly the
linear map ``W``. The eight types:

=================  =====================================================================
``self``           ``(W r)_{c,h,w} = a_c r_{c,h,w}`` (one weight per channel)
``full``           ``Conv2d(C, C, k, padding=k//2)``
``depthwise``      ``Conv2d(C, C, k, padding=k//2, groups=C)`` (space, within a channel)
``pointwise``      ``Conv2d(C, C, 1)`` (channels, at one position)
``depthpointwise`` depthwise ``k x k`` then pointwise ``1 x 1``
``pointdepthwise`` pointwise ``1 x 1`` then depthwise ``k x k``
``local``          topographic: channel ``c`` sits at ``(c // S, c % S)`` of an ``S x S``
                   cortical sheet (``S = ceil(sqrt(C))``, padded positions are empty) and
                   one ``m x m`` kernel ``K`` over the sheet couples neighbours:
                   ``(W r)_c = sum_{c'} K[p(c) - p(c')] r_{c'}`` at the same position
``localdepthwise`` ``local + depthwise`` (the sum of both operators)
=================  =====================================================================

``local`` is evaluated as a ``1 x 1`` convolution whose ``C x C`` matrix is gathered from
the sheet kernel through an index map computed once at construction (no Python loop, no
reshaping of the state per step).

Initialisation is small and stable: weights are drawn ``N(0, gain^2 / fan_in)`` so that the
operator's spectral radius is about ``gain`` (default 0.1), well inside the stable region
``rho < 1`` of the linearised dynamics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynode.errors import ConfigurationError

__all__ = ["recurrence", "RECURRENCE_TYPES", "SelfRecurrence", "LocalRecurrence", "SumOf",
           "sheet_side", "sheet_index_map"]

RECURRENCE_TYPES = ("self", "full", "depthwise", "pointwise", "depthpointwise", "pointdepthwise",
                    "local", "localdepthwise")


def _init(weight: Tensor, gain: float, fan_in: int) -> None:
    with torch.no_grad():
        weight.normal_(0.0, gain / math.sqrt(fan_in))


class SelfRecurrence(nn.Module):
    """``(W r)_{c,h,w} = a_c r_{c,h,w}``: one weight per channel, no mixing at all."""

    def __init__(self, channels: int, gain: float = 0.1, bias: bool = False):
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.full((channels,), float(gain)))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = x * self.weight.view(1, -1, *([1] * (x.dim() - 2)))
        if self.bias is not None:
            y = y + self.bias.view(1, -1, *([1] * (x.dim() - 2)))
        return y

    def extra_repr(self) -> str:
        return f"channels={self.channels}, bias={self.bias is not None}"


def sheet_side(channels: int) -> int:
    """Side ``S`` of the square cortical sheet holding ``channels`` (``S = ceil(sqrt(C))``)."""
    return math.isqrt(channels - 1) + 1 if channels > 1 else 1


def sheet_index_map(channels: int, kernel_size: int) -> Tensor:
    """``(C, C)`` long tensor: entry ``[c, c']`` is the flat index in the ``m x m`` sheet kernel
    of the offset ``p(c') - p(c)`` when the channels are neighbours (``|dy|, |dx| <= m // 2``),
    and ``m * m`` (the index of an appended zero) otherwise. ``p(c) = (c // S, c % S)``."""
    s, r = sheet_side(channels), kernel_size // 2
    c = torch.arange(channels)
    y, x = c // s, c % s
    dy = y.view(1, -1) - y.view(-1, 1)  # [c, c'] = y(c') - y(c)
    dx = x.view(1, -1) - x.view(-1, 1)
    near = (dy.abs() <= r) & (dx.abs() <= r)
    flat = (dy + r) * kernel_size + (dx + r)
    return torch.where(near, flat, torch.full_like(flat, kernel_size * kernel_size))


class LocalRecurrence(nn.Module):
    """Topographic recurrence: an ``m x m`` convolution over the ``S x S`` channel sheet, applied
    at every position as the ``C x C`` matrix ``W[c, c'] = K[p(c') - p(c)]`` (cross-correlation
    convention, zero outside the kernel). Parameters: ``m * m`` (plus ``C`` with ``bias``)."""

    def __init__(self, channels: int, kernel_size: int = 3, gain: float = 0.1, bias: bool = False):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigurationError(f"local recurrence: the sheet kernel size must be odd and >= 1, "
                                     f"got {kernel_size}")
        self.channels, self.kernel_size = channels, kernel_size
        self.side = sheet_side(channels)
        self.kernel = nn.Parameter(torch.empty(kernel_size, kernel_size))
        _init(self.kernel, gain, kernel_size * kernel_size)
        self.register_buffer("index", sheet_index_map(channels, kernel_size), persistent=False)
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def weight_matrix(self) -> Tensor:
        """The ``(C, C)`` channel-mixing matrix gathered from the sheet kernel."""
        flat = torch.cat([self.kernel.reshape(-1), self.kernel.new_zeros(1)])
        return flat[self.index]

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight_matrix()
        return F.conv2d(x, w.view(self.channels, self.channels, 1, 1), self.bias)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, sheet={self.side}x{self.side}, "
                f"kernel_size={self.kernel_size}, bias={self.bias is not None}")


class SumOf(nn.Module):
    """``y = sum_i op_i(x)`` (e.g. ``localdepthwise = local + depthwise``)."""

    def __init__(self, *ops: nn.Module):
        super().__init__()
        self.ops = nn.ModuleList(ops)

    def forward(self, x: Tensor) -> Tensor:
        y = self.ops[0](x)
        for op in self.ops[1:]:
            y = y + op(x)
        return y


def _conv(channels: int, k: int, gain: float, bias: bool, groups: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, k, padding=k // 2, groups=groups, bias=bias)
    _init(conv.weight, gain, (channels // groups) * k * k)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def recurrence(type: str, channels: int, kernel_size: int = 3, **options) -> nn.Module:
    """Build a recurrence operator ``(B, C, H, W) -> (B, C, H, W)`` of the given ``type``.

    Parameters
    ----------
    type : one of :data:`RECURRENCE_TYPES`.
    channels : ``C``.
    kernel_size : the spatial kernel ``k`` (odd); for ``local`` the sheet kernel ``m``.
    options : ``gain`` (float, default 0.1: initial spectral radius scale), ``bias`` (bool,
        default False), and for ``localdepthwise`` ``sheet_kernel_size`` (default 3).

    Parameter counts (no bias): ``self`` C, ``full`` C^2 k^2, ``depthwise`` C k^2,
    ``pointwise`` C^2, ``depthpointwise`` / ``pointdepthwise`` C k^2 + C^2, ``local`` m^2,
    ``localdepthwise`` m^2 + C k^2.
    """
    if type not in RECURRENCE_TYPES:
        raise ConfigurationError(f"unknown recurrence type {type!r}; known: {', '.join(RECURRENCE_TYPES)}")
    if not (isinstance(channels, int) and channels >= 1):
        raise ConfigurationError(f"recurrence {type!r}: channels must be a positive int, got {channels!r}")
    if not (isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2 == 1):
        raise ConfigurationError(f"recurrence {type!r}: kernel_size must be an odd positive int "
                                 f"(the output keeps the input's size), got {kernel_size!r}")
    allowed = {"gain", "bias"} | ({"sheet_kernel_size"} if type == "localdepthwise" else set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigurationError(f"recurrence {type!r}: unknown options {unknown}; allowed: {sorted(allowed)}")
    op = _build(type, channels, kernel_size, options)
    # how it was made, for model specs (dynode.spec): the init gain is not readable from the weights
    op.dynode_spec = {"kind": "recurrence", "type": type, "channels": channels, "kernel_size": kernel_size,
                      **options}
    return op


def _build(type: str, channels: int, kernel_size: int, options: dict) -> nn.Module:
    gain = float(options.get("gain", 0.1))
    bias = bool(options.get("bias", False))
    c, k = channels, kernel_size
    if type == "self":
        return SelfRecurrence(c, gain, bias)
    if type == "full":
        return _conv(c, k, gain, bias)
    if type == "depthwise":
        return _conv(c, k, gain, bias, groups=c)
    if type == "pointwise":
        return _conv(c, 1, gain, bias)
    # the two factors of a separable operator each get sqrt(gain), so the product is ~gain
    g = math.sqrt(gain)
    if type == "depthpointwise":
        return nn.Sequential(_conv(c, k, g, False, groups=c), _conv(c, 1, g, bias))
    if type == "pointdepthwise":
        return nn.Sequential(_conv(c, 1, g, False), _conv(c, k, g, bias, groups=c))
    if type == "local":
        return LocalRecurrence(c, k, gain, bias)
    m = int(options.get("sheet_kernel_size", 3))
    return SumOf(LocalRecurrence(c, m, gain / 2, bias), _conv(c, k, gain / 2, False, groups=c))

"""Skip and feedback adapters between populations of different shapes.

:func:`adapter` builds one from the declared shapes alone (no dummy forward): resize first,
then project the channels, so that the projection runs at the smaller of the two resolutions
for feed-forward skips (1/16 of the cost for a 4x downsampling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from dynode.errors import ShapeError

__all__ = ["Resize", "Adapter", "adapter"]


class Resize(nn.Module):
    """Resize ``(B, C, H, W)`` to ``(B, C, *size)``: area average down, bilinear up.

    An exact integer shrink factor uses ``avg_pool2d`` (kernel = stride = factor), which equals
    area averaging; other shrinks use adaptive average pooling (area interpolation).
    """

    def __init__(self, in_size: tuple[int, int], size: tuple[int, int]):
        super().__init__()
        (h, w), (oh, ow) = in_size, size
        self.in_size, self.size = (h, w), (oh, ow)
        if oh <= h and ow <= w:
            self.mode = "area"
            self.factor = (h // oh, w // ow) if h % oh == 0 and w % ow == 0 else None
        elif oh >= h and ow >= w:
            self.mode = "bilinear"
            self.factor = None
        else:
            raise ShapeError(f"cannot resize {in_size} to {size}: one side shrinks and the other grows; "
                             "give an explicit operator for this connection")

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "area":
            if self.factor is not None:
                return F.avg_pool2d(x, self.factor, self.factor)
            return F.adaptive_avg_pool2d(x, self.size)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"{self.in_size} -> {self.size}, mode={self.mode}"


class Adapter(nn.Module):
    """``project(resize(x))``; either part may be absent (identity)."""

    def __init__(self, resize: nn.Module | None, project: nn.Module | None):
        super().__init__()
        self.resize = resize
        self.project = project

    def forward(self, x: Tensor) -> Tensor:
        if self.resize is not None:
            x = self.resize(x)
        if self.project is not None:
            x = self.project(x)
        return x


def adapter(src_shape: Sequence[int], dst_shape: Sequence[int], *, project: bool | None = None,
            bias: bool = False) -> Adapter:
    r"""The adapter from ``src_shape`` to ``dst_shape`` (per-sample shapes, batch excluded),

    .. math:: A(r) = P\,\mathrm{resize}(r)

    ``(C, H, W) -> (C', H', W')``: :class:`Resize` (if ``(H, W) != (H', W')``), then ``P`` a
    ``1 x 1`` conv ``C -> C'`` (if ``C != C'`` or ``project=True``). ``(F,) -> (F',)``: ``P`` a
    linear map (if ``F != F'`` or ``project=True``).
    """
    src, dst = tuple(int(s) for s in src_shape), tuple(int(s) for s in dst_shape)
    if len(src) == 3 and len(dst) == 3:
        resize = Resize(src[1:], dst[1:]) if src[1:] != dst[1:] else None
        need = src[0] != dst[0] if project is None else bool(project)
        proj = nn.Conv2d(src[0], dst[0], 1, bias=bias) if need else None
        return Adapter(resize, proj)
    if len(src) == 1 and len(dst) == 1:
        need = src != dst if project is None else bool(project)
        return Adapter(None, nn.Linear(src[0], dst[0], bias=bias) if need else None)
    raise ShapeError(f"no automatic adapter from shape {src} to {dst}: adapters join (C, H, W) "
                     "populations (or flat (F,) ones); give an explicit operator")

r"""Stimuli built from images and envelopes: contrast modulation, sums and sequences.

:class:`Modulated` is the workhorse of in-silico experiments: an image batch ``x_b`` shown
with a temporal envelope ``e_b(t)`` (the contrast over time) around a background ``g``:

.. math:: I_b(t) = g + e_b(t)\,(x_b - g).

``e = 1`` shows the image as it is, ``e = 0`` shows the background (blank screen or mean
grey), ``0 < e < 1`` lowers the contrast around the background. On every constant piece of
the envelope the value is computed once and cached, so a solver's call ``stim(t)`` costs
one ``bisect`` and a dict lookup (no allocation) while the envelope is piecewise constant.

:class:`Sum` adds stimuli (e.g. an image and dynamic noise; ``a + b`` on stimuli) and
:class:`Succession` shows stimuli one after the other (e.g. image, then mask).

``background`` means one thing wherever it is taken (here, in :mod:`dynode.stimuli.protocols`,
:mod:`dynode.stimuli.noise` and :mod:`dynode.experiments`): the screen shown around the images,
in the units the model is fed, resolved against the images by :func:`resolve_background`; the
default everywhere is :data:`BACKGROUND`, ``"mean"`` (each image's mean luminance: a change of
contrast keeps the mean, as on Groen et al.'s mean-grey screen, for raw and normalised images
alike).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from itertools import accumulate

import torch
from torch import Tensor

from dynode.errors import ConfigurationError, ShapeError
from dynode.stimulus import Stimulus, StimulusValue, Sum, merge_conditions
from dynode.stimuli.envelopes import Envelope

__all__ = ["Modulated", "Sum", "Succession", "as_float_images", "resolve_background", "scale_contrast",
           "merge_conditions", "BACKGROUND", "BACKGROUNDS"]

BACKGROUND = "mean"
"""The default screen of every function that takes ``background`` (see :func:`resolve_background`)."""
BACKGROUNDS = ("mean", "blank", "grey", "gray")
"""The named screens :func:`resolve_background` knows."""


def as_float_images(images) -> Tensor:
    """Images as a floating tensor; ``uint8`` images (0-255, e.g. a raw CIFAR batch) are
    divided by 255 (as torchvision's ``ToTensor``), other types converted as they are."""
    images = torch.as_tensor(images)
    if images.dtype == torch.uint8:
        return images.to(torch.get_default_dtype()) / 255.0
    if not images.is_floating_point():
        return images.to(torch.get_default_dtype())
    return images


def resolve_background(background, images: Tensor) -> Tensor:
    """The screen around ``images`` ``(N, *shape)`` as a tensor that broadcasts against them.

    ``"mean"`` (:data:`BACKGROUND`: each image's mean per channel, its mean luminance),
    ``"blank"`` (0: the mean grey of images normalised to their data set's mean),
    ``"grey"``/``"gray"`` (0.5, mid-grey of raw images in [0, 1]), a number, or a tensor.
    """
    if isinstance(background, Tensor):
        return background.to(device=images.device, dtype=images.dtype)
    if isinstance(background, (int, float)):
        return torch.tensor(float(background), device=images.device, dtype=images.dtype)
    if background == "blank":
        return torch.zeros((), device=images.device, dtype=images.dtype)
    if background in ("grey", "gray"):
        return torch.tensor(0.5, device=images.device, dtype=images.dtype)
    if background == "mean":
        dims = tuple(range(2 if images.dim() >= 3 else 1, images.dim()))  # (N, C, ...) or (N, F)
        return images.mean(dim=dims, keepdim=True) if dims else images
    raise ConfigurationError(f"background must be 'blank', 'grey', 'mean', a number or a tensor, "
                             f"got {background!r}")


def scale_contrast(images: Tensor, contrast, background=BACKGROUND) -> Tensor:
    """``g + c (x - g)``: images at contrast ``c`` (a number or one per image) around ``g``."""
    g = resolve_background(background, images)
    c = torch.as_tensor(contrast, dtype=images.dtype, device=images.device)
    if c.dim() == 1:
        c = c.reshape(-1, *([1] * (images.dim() - 1)))
    return g + c * (images - g)


class Modulated(Stimulus):
    """``I_b(t) = g + e_b(t) (x_b - g)``: images ``x`` (batch first) times an envelope.

    Parameters
    ----------
    images : tensor ``(N, *shape)`` (``uint8`` is scaled to [0, 1]). ``N`` must equal the
        envelope's batch, or one of them is 1 and is broadcast to the other.
    envelope : :class:`~dynode.stimuli.envelopes.Envelope` (its breakpoints become the
        stimulus's breakpoints: jumps and ramp kinks).
    background : the screen, see :func:`resolve_background` (default :data:`BACKGROUND`, ``"mean"``).
    input : name of the network input to feed; ``None`` returns a bare tensor (a network
        with exactly one input).
    conditions : per-sample labels (one entry per sample of the resulting batch).
    """

    def __init__(self, images, envelope: Envelope, *, background=BACKGROUND, input: str | None = None,
                 conditions: Mapping[str, Sequence] | None = None):
        if not isinstance(envelope, Envelope):
            raise ConfigurationError(f"envelope must be a dynode.stimuli.envelopes.Envelope, got "
                                     f"{type(envelope).__name__}")
        images = as_float_images(images)
        if images.dim() < 2:
            raise ShapeError(f"images must be batch first (N, *shape), got shape {tuple(images.shape)}")
        n, e = images.shape[0], envelope.batch_size
        if n != e and 1 not in (n, e):
            raise ShapeError(f"{n} images but the envelope has batch {e}; give one image, one "
                             "envelope sample, or the same number of each")
        self.batch_size = max(n, e)
        self.images = images
        self.envelope = envelope.to(device=images.device, dtype=images.dtype)
        self.background_spec = background
        self.background = resolve_background(background, images)
        self.input = input
        self.breakpoints = envelope.breakpoints
        self.conditions = merge_conditions([conditions or {}], self.batch_size)
        self._diff = images - self.background
        self._view = (-1,) + (1,) * (images.dim() - 1)
        self._cache: dict[int, StimulusValue] = {}
        self._by_level: dict[bytes, StimulusValue] = {}
        self._cacheable = not images.requires_grad

    def _compute(self, level: Tensor) -> Tensor:
        out = torch.addcmul(self.background, level.reshape(self._view), self._diff)
        if out.shape[0] != self.batch_size:
            out = out.expand(self.batch_size, *out.shape[1:])
        return out

    def _wrap(self, x: Tensor) -> StimulusValue:
        return {self.input: x} if self.input is not None else x

    def __call__(self, t: float) -> StimulusValue:
        env = self.envelope
        j = env.piece(t)
        hit = self._cache.get(j)
        if hit is not None:
            return hit
        level = env(t)
        if not (self._cacheable and env.piece_is_constant(j)):
            return self._wrap(self._compute(level))
        key = level.detach().cpu().numpy().tobytes()  # once per piece, not per call
        value = self._by_level.get(key)
        if value is None:
            value = self._by_level[key] = self._wrap(self._compute(level))
        self._cache[j] = value
        return value

    def to(self, device=None, dtype=None) -> "Modulated":
        images = self.images.to(device=device, dtype=dtype)  # dtype None: keep the images' dtype
        bg = self.background_spec
        if isinstance(bg, Tensor):
            bg = bg.to(device=images.device, dtype=images.dtype)
        return Modulated(images, self.envelope, background=bg, input=self.input,
                         conditions=self.conditions)

    def __repr__(self) -> str:
        return (f"Modulated(images={tuple(self.images.shape)}, {self.envelope!r}, "
                f"background={self.background_spec!r})")


class Succession(Stimulus):
    """Stimuli one after the other, each in its own time.

    Stimulus ``i`` is shown on ``[start + D_i, start + D_{i+1})`` with
    ``D_i = sum(durations[:i])`` and sees the local time ``t - start - D_i``. Before the
    first window the first stimulus is shown (local time negative), after the last window
    the last one continues. Breakpoints: the interior window boundaries (a jump unless the
    neighbouring stimuli agree there) and each part's breakpoints inside its window.
    """

    def __init__(self, stimuli: Sequence[Stimulus], durations: Sequence[float], *, start: float = 0.0,
                 conditions: Mapping[str, Sequence] | None = None):
        stimuli, durations = list(stimuli), [float(d) for d in durations]
        if not stimuli or len(stimuli) != len(durations):
            raise ConfigurationError("Succession needs as many durations (ms) as stimuli (at least one)")
        if any(not d > 0 for d in durations):
            raise ConfigurationError(f"Succession durations must be > 0 ms, got {durations}")
        self.stimuli, self.durations, self.start = stimuli, durations, float(start)
        self._lows = lows = list(accumulate(durations, initial=self.start))  # start + D_i
        self._interior = lows[1:-1]
        bps = set(self._interior)
        n = len(stimuli)
        for i, (s, lo, hi) in enumerate(zip(stimuli, lows[:-1], lows[1:])):
            for b in s.breakpoints:
                tb = lo + b
                if (i == 0 or tb > lo) and (i == n - 1 or tb < hi):
                    bps.add(tb)
        self.breakpoints = tuple(sorted(bps))
        self.conditions = merge_conditions([s.conditions for s in stimuli] + [conditions or {}])

    def __call__(self, t: float) -> StimulusValue:
        i = bisect_right(self._interior, t)
        return self.stimuli[i](t - self._lows[i])

    def to(self, device=None, dtype=None) -> "Succession":
        return Succession([s.to(device, dtype) for s in self.stimuli], self.durations, start=self.start,
                        conditions=self.conditions)

    def __repr__(self) -> str:
        return f"Succession({self.stimuli!r}, durations={self.durations}, start={self.start})"


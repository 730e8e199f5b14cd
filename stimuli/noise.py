r"""Image noise at a chosen signal-to-noise ratio, frozen by a seed.

Signal-to-noise ratio is a power ratio, per image:

.. math:: \mathrm{SNR} = \frac{P_s}{P_n}, \qquad P_s = \overline{(x - g)^2},
          \qquad P_n = \overline{n^2}, \qquad \mathrm{SNR_{dB}} = 10 \log_{10} \mathrm{SNR},

with the bar the mean over the pixels of one image, ``x`` the image, ``g`` the reference
background (``"mean"``: the image's mean per channel, so ``P_s`` is its contrast energy)
and ``n`` the added noise. Every noise field is rescaled so that its **realised** power is
exactly ``P_s / SNR`` (not only in expectation).

Kinds (:data:`NOISE_KINDS`):

* ``gaussian``: i.i.d. normal; ``uniform``: i.i.d. uniform on a symmetric interval;
* ``salt_and_pepper``: impulses of random sign at a fraction ``density`` of the pixels
  (additive, amplitude set by the SNR; clip the result yourself if you need [0, 1]);
* ``poisson``: photon noise ``Poisson(lam x) / lam - x`` (signal dependent; needs
  ``x >= 0``; ``lam`` follows from the SNR, then the field is rescaled exactly);
* ``correlated``: Gaussian noise blurred by a Gaussian of ``correlation`` pixels (spatially
  correlated; circular, over the last two dimensions);
* ``phase_scrambled``: the image's own amplitude spectrum with random phases (over the
  last two dimensions), i.e. noise with the image's spatial-frequency content.

Frozen noise: a field is generated on the CPU in float64 by a ``torch.Generator`` seeded
from ``(seed, frame)``, so the same seed gives the same values on every device and in every
order of queries; :class:`DynamicNoise` refreshes the field every ``frame_ms`` ms with frame
``k`` seeded by ``(seed, k)``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor

from dynode.errors import ConfigurationError, ShapeError
from dynode.stimulus import Stimulus, StimulusValue
from dynode.stimuli.compose import BACKGROUND, resolve_background
from dynode.tolerances import TIME_RTOL

__all__ = ["NOISE_KINDS", "noise_field", "signal_power", "add_noise", "snr_of", "DynamicNoise"]

NOISE_KINDS = ("gaussian", "uniform", "salt_and_pepper", "poisson", "correlated", "phase_scrambled")


def _generator(seed, frame: int = 0) -> torch.Generator:
    entropy = [int(s) for s in (seed if isinstance(seed, (tuple, list)) else [seed])] + [int(frame)]
    if any(e < 0 for e in entropy):
        raise ConfigurationError(f"noise seeds must be non-negative ints, got {seed!r}")
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device="cpu")
    g.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return g


def _per_sample_rms(x: Tensor) -> Tensor:
    dims = tuple(range(1, x.dim()))
    return x.pow(2).mean(dim=dims, keepdim=True).sqrt() if dims else x.abs()


def _gaussian_blur_fft(x: Tensor, sigma: float) -> Tensor:
    h, w = x.shape[-2], x.shape[-1]
    fy = torch.fft.fftfreq(h, dtype=x.dtype)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=x.dtype)[None, :]
    gain = torch.exp(-2.0 * math.pi ** 2 * sigma ** 2 * (fy ** 2 + fx ** 2))
    return torch.fft.irfft2(torch.fft.rfft2(x) * gain, s=(h, w))


def noise_field(kind: str, shape, *, seed=0, frame: int = 0, reference: Tensor | None = None,
                density: float = 0.05, correlation: float = 2.0, rate=None) -> Tensor:
    """A noise field of ``shape`` (batch first) with unit RMS per sample, float64 on the CPU.

    ``reference`` (same shape) is needed by ``poisson`` (the intensities ``x >= 0``) and
    ``phase_scrambled`` (whose amplitude spectrum is kept). ``rate`` is Poisson's photons
    per unit intensity (one per sample or a number; default 100).
    """
    if kind not in NOISE_KINDS:
        raise ConfigurationError(f"unknown noise kind {kind!r}; choose one of {NOISE_KINDS}")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ShapeError(f"noise shape must be batch first (N, *shape), got {shape}")
    g = _generator(seed, frame)
    if reference is not None:
        reference = reference.detach().to("cpu", torch.float64)
        if tuple(reference.shape) != shape:
            reference = reference.expand(shape)
    if kind == "gaussian":
        n = torch.randn(shape, generator=g, dtype=torch.float64)
    elif kind == "uniform":
        n = torch.rand(shape, generator=g, dtype=torch.float64).mul_(2).sub_(1)
    elif kind == "salt_and_pepper":
        if not 0 < density <= 1:
            raise ConfigurationError(f"salt_and_pepper density must be in (0, 1], got {density}")
        u = torch.rand(shape, generator=g, dtype=torch.float64)
        sign = torch.rand(shape, generator=g, dtype=torch.float64) < 0.5
        n = torch.where(u < density, torch.where(sign, 1.0, -1.0), 0.0).to(torch.float64)
    elif kind == "correlated":
        if len(shape) < 3 or not correlation > 0:
            raise ConfigurationError("correlated noise needs images (N, ..., H, W) and correlation > 0 "
                                     f"(pixels); got shape {shape}, correlation {correlation}")
        n = _gaussian_blur_fft(torch.randn(shape, generator=g, dtype=torch.float64), float(correlation))
    elif kind == "poisson":
        if reference is None:
            raise ConfigurationError("poisson noise is signal dependent: give reference= (the images)")
        if torch.any(reference < 0):
            raise ConfigurationError("poisson noise needs non-negative intensities (images in [0, 1])")
        lam = torch.as_tensor(100.0 if rate is None else rate, dtype=torch.float64)
        lam = lam.reshape(-1, *([1] * (len(shape) - 1))) if lam.dim() == 1 else lam
        counts = torch.poisson(reference * lam, generator=g)
        n = counts / lam - reference
    else:  # phase_scrambled
        if reference is None or len(shape) < 3:
            raise ConfigurationError("phase_scrambled noise needs reference= images (N, ..., H, W)")
        h, w = shape[-2], shape[-1]
        centred = reference - reference.mean(dim=(-2, -1), keepdim=True)
        amp = torch.fft.rfft2(centred).abs()
        phase = torch.fft.rfft2(torch.randn(shape, generator=g, dtype=torch.float64))
        phase = phase / phase.abs().clamp_min(1e-300)
        n = torch.fft.irfft2(amp * phase, s=(h, w))
    rms = _per_sample_rms(n)
    if torch.any(rms == 0):
        raise ConfigurationError(f"{kind} noise came out all zero for some sample (a constant "
                                 "reference image, or a density too small for the image size)")
    return n / rms


def signal_power(images: Tensor, background=BACKGROUND) -> Tensor:
    """``P_s`` per image: the mean square of ``images - background`` -> ``(N,)``."""
    diff = images.to(torch.float64) - resolve_background(background, images).to(torch.float64)
    return diff.pow(2).flatten(1).mean(dim=1)


def snr_of(images: Tensor, noisy: Tensor, background=BACKGROUND) -> Tensor:
    """Realised SNR per image of ``noisy = images + n`` (power ratio, not dB)."""
    noise = (noisy.to(torch.float64) - images.to(torch.float64)).pow(2).flatten(1).mean(dim=1)
    return signal_power(images, background) / noise


def _snr(snr, snr_db) -> float:
    if (snr is None) == (snr_db is None):
        raise ConfigurationError("give exactly one of snr= (power ratio) and snr_db= (decibels)")
    value = float(snr) if snr is not None else 10.0 ** (float(snr_db) / 10.0)
    if not (value > 0 and math.isfinite(value)):
        raise ConfigurationError(f"SNR must be a finite number > 0, got {value}")
    return value


def _scaled_noise(kind: str, images: Tensor, snr: float, seed, frame: int, background, **params) -> Tensor:
    ps = signal_power(images, background)
    if torch.any(ps == 0):
        raise ConfigurationError("an image has zero signal power around the background; the SNR is "
                                 "undefined (choose another background=)")
    if kind == "poisson" and params.get("rate") is None:
        mean = images.detach().to(torch.float64).flatten(1).mean(dim=1)
        params["rate"] = (snr * mean / ps).clamp_min(1e-6).cpu()  # E[P_n] = mean(x) / lam
    n = noise_field(kind, images.shape, seed=seed, frame=frame,
                    reference=images if kind in ("poisson", "phase_scrambled") else None, **params)
    amp = (ps.cpu() / snr).sqrt().reshape(-1, *([1] * (images.dim() - 1)))
    return n * amp


def add_noise(images: Tensor, kind: str = "gaussian", *, snr=None, snr_db=None, seed=0,
              background=BACKGROUND, **params) -> Tensor:
    """``images + n`` with ``n`` of ``kind`` scaled to the asked SNR exactly (per image).

    Deterministic in ``seed``; ``params`` go to :func:`noise_field` (``density``,
    ``correlation``, ``rate``)."""
    images = torch.as_tensor(images)
    n = _scaled_noise(kind, images, _snr(snr, snr_db), seed, 0, background, **params)
    return images + n.to(device=images.device, dtype=images.dtype)


class DynamicNoise(Stimulus):
    """Frozen noise that is redrawn every ``frame_ms`` ms: ``I(t) = n_k`` on frame ``k``.

    Frame ``k`` covers ``[t_start + k frame_ms, t_start + (k+1) frame_ms)`` (frame 0 also
    covers every earlier time, the last frame every later one) and is drawn from
    ``(seed, k)`` only, so any order of queries gives the same values. Its breakpoints are
    the frame boundaries inside ``(t_start, t_end)``; ``frame_ms=None`` is static noise.

    The amplitude comes from ``scale`` (the noise RMS) or from ``snr``/``snr_db`` relative
    to the signal power of ``reference`` images (:func:`signal_power`).
    """

    def __init__(self, kind: str, shape=None, *, frame_ms: float | None = None, t_end: float | None = None,
                 t_start: float = 0.0, seed=0, scale=None, snr=None, snr_db=None, reference=None,
                 background=BACKGROUND, input: str | None = None, cache_frames: int = 4,
                 dtype=None, device=None, **params):
        if kind not in NOISE_KINDS:
            raise ConfigurationError(f"unknown noise kind {kind!r}; choose one of {NOISE_KINDS}")
        if reference is not None:
            reference = torch.as_tensor(reference)
            shape = tuple(reference.shape) if shape is None else tuple(shape)
        if shape is None:
            raise ConfigurationError("DynamicNoise needs shape= (batch first) or reference= images")
        self.shape = tuple(int(s) for s in shape)
        if frame_ms is not None:
            frame_ms = float(frame_ms)
            if not frame_ms > 0:
                raise ConfigurationError(f"frame_ms must be > 0, got {frame_ms}")
            if t_end is None or not float(t_end) > t_start:
                raise ConfigurationError("dynamic noise (frame_ms given) needs t_end > t_start (ms) to "
                                         "list its frame boundaries as breakpoints")
            n_frames = math.ceil((float(t_end) - t_start) / frame_ms - TIME_RTOL)
            self._bounds = [t_start + k * frame_ms for k in range(1, n_frames)]
        else:
            self._bounds = []
        self.kind, self.frame_ms, self.t_start, self.t_end, self.seed = kind, frame_ms, float(t_start), t_end, seed
        self.params, self.background, self.input = params, background, input
        self.reference = reference
        if (snr is not None or snr_db is not None):
            if reference is None:
                raise ConfigurationError("snr= needs reference= images (the signal)")
            if scale is not None:
                raise ConfigurationError("give either scale= or snr=/snr_db=, not both")
            self._snr, self.scale = _snr(snr, snr_db), None
        else:
            if scale is None:
                raise ConfigurationError("give the noise amplitude: scale= (RMS) or snr=/snr_db=")
            self._snr, self.scale = None, float(scale)
        if kind in ("poisson", "phase_scrambled") and reference is None:
            raise ConfigurationError(f"{kind} noise needs reference= images")
        self.dtype = dtype if dtype is not None else torch.get_default_dtype()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.breakpoints = tuple(self._bounds)
        self.conditions = {}
        self._cache: OrderedDict[int, StimulusValue] = OrderedDict()
        self._cache_frames = max(1, int(cache_frames))

    def frame(self, t: float) -> int:
        return bisect_right(self._bounds, t)

    def _make(self, k: int) -> Tensor:
        if self._snr is not None:
            n = _scaled_noise(self.kind, self.reference, self._snr, self.seed, k, self.background,
                              **dict(self.params))
        else:
            n = noise_field(self.kind, self.shape, seed=self.seed, frame=k, reference=self.reference,
                            **self.params) * self.scale
        return n.to(device=self.device, dtype=self.dtype)

    def __call__(self, t: float) -> StimulusValue:
        k = bisect_right(self._bounds, t)
        hit = self._cache.get(k)
        if hit is not None:
            return hit
        x = self._make(k)
        value = {self.input: x} if self.input is not None else x
        self._cache[k] = value
        if len(self._cache) > self._cache_frames:
            self._cache.popitem(last=False)
        return value

    def to(self, device=None, dtype=None) -> "DynamicNoise":
        new = object.__new__(DynamicNoise)
        new.__dict__.update(self.__dict__)
        new.device = torch.device(device) if device is not None else self.device
        new.dtype = dtype if dtype is not None else self.dtype
        new._cache = OrderedDict()
        return new

    def __repr__(self) -> str:
        return (f"DynamicNoise({self.kind!r}, shape={self.shape}, frame_ms={self.frame_ms}, "
                f"seed={self.seed})")

r"""Generated images (no data needed) and an offline classification task built from them.

All images are float tensors ``(N, channels, size, size)`` with values in ``[0, 1]`` around a
mean luminance ``mean`` (0.5 by default); contrast is Michelson contrast, the amplitude of
the modulation relative to the mean: ``x = mean * (1 + contrast * s)`` with ``s`` in
``[-1, 1]``. Pixel coordinates are centred: ``x, y`` run over ``-(size-1)/2 ... (size-1)/2``.

* :func:`grating`: ``s = cos(2 pi f (x cos(theta) + y sin(theta)) / size + phase)``,
  ``f`` in cycles per image, ``theta`` the orientation in degrees (0: vertical bars).
* :func:`gabor`: a grating times ``exp(-((x-cx)^2 + (y-cy)^2) / (2 sigma^2))``, carrier
  phase measured at the centre ``(cx, cy)``.
* :func:`checkerboard`: ``s = (-1)^(floor((x+ox)/check) + floor((y+oy)/check))``.
* :func:`pink_noise`: random phases with amplitude spectrum ``1 / |f|^exponent``, scaled so
  that ``max |s| = 1``.

Every parameter may be a number or one value per image; the batch is their common length.

:func:`generated_task` builds a labelled data set from these (classes: oriented Gabors,
checkerboards, 1/f noise) with nuisance variation in phase, position, spatial frequency and
contrast, so that a classifier must be invariant to them. It is ``dynode demo``'s default
data set and a small recurrent network learns it in minutes on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dynode.errors import ConfigurationError
from dynode.stimuli.datasets import InMemoryLoader

__all__ = ["grating", "gabor", "checkerboard", "pink_noise", "generated_task", "ImageTask",
           "TASK_CLASSES", "DEFAULT_CLASSES"]


def _params(**kw) -> tuple[int, dict[str, Tensor]]:
    vals = {k: torch.as_tensor(v, dtype=torch.float64).reshape(-1) for k, v in kw.items()}
    sizes = {k: v.numel() for k, v in vals.items() if v.numel() != 1}
    if len(set(sizes.values())) > 1:
        raise ConfigurationError(f"per-image parameters have different lengths: {sizes}")
    n = next(iter(sizes.values()), 1)
    return n, {k: v.expand(n).reshape(n, 1, 1) for k, v in vals.items()}


def _coords(size: int) -> tuple[Tensor, Tensor]:
    if not (isinstance(size, int) and size >= 2):
        raise ConfigurationError(f"size must be an int >= 2 (pixels), got {size!r}")
    c = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    return c[None, :, None], c[None, None, :]  # y (rows), x (columns)


def _finish(s: Tensor, contrast: Tensor, mean: Tensor, channels: int) -> Tensor:
    if torch.any(contrast < 0) or torch.any(contrast > 1):
        raise ConfigurationError("contrast must be in [0, 1]")
    img = mean * (1 + contrast * s)
    return img.unsqueeze(1).expand(-1, channels, -1, -1).to(torch.get_default_dtype()).contiguous()


def grating(size: int = 32, *, orientation=0.0, frequency=4.0, phase=0.0, contrast=1.0, mean=0.5,
            channels: int = 1) -> Tensor:
    """Sinusoidal gratings ``(N, channels, size, size)``; orientation in degrees, frequency in
    cycles per image, phase in radians."""
    n, p = _params(orientation=orientation, frequency=frequency, phase=phase, contrast=contrast, mean=mean)
    y, x = _coords(size)
    th = torch.deg2rad(p["orientation"])
    s = torch.cos(2 * math.pi * p["frequency"] * (x * torch.cos(th) + y * torch.sin(th)) / size + p["phase"])
    return _finish(s, p["contrast"], p["mean"], channels)


def gabor(size: int = 32, *, orientation=0.0, frequency=4.0, phase=0.0, contrast=1.0, sigma=None,
          center_x=0.0, center_y=0.0, mean=0.5, channels: int = 1) -> Tensor:
    """Gabor patches: a grating (phase at the centre) under a Gaussian of ``sigma`` px
    (default ``size / 6``) centred at ``(center_x, center_y)`` px from the image centre."""
    sigma = size / 6 if sigma is None else sigma
    n, p = _params(orientation=orientation, frequency=frequency, phase=phase, contrast=contrast,
                   sigma=sigma, cx=center_x, cy=center_y, mean=mean)
    if torch.any(p["sigma"] <= 0):
        raise ConfigurationError("gabor sigma must be > 0 px")
    y, x = _coords(size)
    xr, yr = x - p["cx"], y - p["cy"]
    th = torch.deg2rad(p["orientation"])
    carrier = torch.cos(2 * math.pi * p["frequency"] * (xr * torch.cos(th) + yr * torch.sin(th)) / size
                        + p["phase"])
    env = torch.exp(-(xr ** 2 + yr ** 2) / (2 * p["sigma"] ** 2))
    return _finish(carrier * env, p["contrast"], p["mean"], channels)


def checkerboard(size: int = 32, *, check=4.0, offset_x=0.0, offset_y=0.0, contrast=1.0, mean=0.5,
                 channels: int = 1) -> Tensor:
    """Checkerboards with squares of ``check`` px, shifted by ``(offset_x, offset_y)`` px."""
    n, p = _params(check=check, ox=offset_x, oy=offset_y, contrast=contrast, mean=mean)
    if torch.any(p["check"] <= 0):
        raise ConfigurationError("checkerboard check size must be > 0 px")
    y, x = _coords(size)
    parity = torch.floor((x + p["ox"]) / p["check"]) + torch.floor((y + p["oy"]) / p["check"])
    s = 1.0 - 2.0 * torch.remainder(parity, 2.0)
    return _finish(s, p["contrast"], p["mean"], channels)


def pink_noise(size: int = 32, n: int = 1, *, exponent=1.0, contrast=1.0, mean=0.5, seed: int = 0,
               channels: int = 1) -> Tensor:
    """``n`` images of ``1/f^exponent`` noise (exponent 1: pink, natural-image-like spectra)."""
    if not (isinstance(n, int) and n >= 1):
        raise ConfigurationError(f"n must be an int >= 1, got {n!r}")
    _, p = _params(exponent=torch.as_tensor(exponent).expand(n), contrast=contrast, mean=mean)
    g = torch.Generator().manual_seed(int(seed))
    fy = torch.fft.fftfreq(size, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(size, dtype=torch.float64)[None, :]
    f = torch.sqrt(fy ** 2 + fx ** 2)
    f[0, 0] = 1.0
    amp = f[None] ** (-p["exponent"])
    amp[:, 0, 0] = 0.0
    white = torch.fft.rfft2(torch.randn(n, size, size, generator=g, dtype=torch.float64))
    s = torch.fft.irfft2(white * amp, s=(size, size))
    s = s / s.flatten(1).abs().amax(dim=1).clamp_min(1e-300).reshape(n, 1, 1)
    return _finish(s, p["contrast"], p["mean"], channels)


# ------------------------------------------------------------------------ the task
TASK_CLASSES = ("vertical", "horizontal", "diagonal", "antidiagonal", "checkerboard", "noise")
"""Class names understood by :func:`generated_task`: Gabors at 0, 90, 45 and 135 degrees,
checkerboards and 1/f noise."""
DEFAULT_CLASSES = TASK_CLASSES
_ORIENT = {"vertical": 0.0, "horizontal": 90.0, "diagonal": 45.0, "antidiagonal": 135.0}


@dataclass(frozen=True)
class ImageTask:
    """An in-memory classification data set: images in ``[0, 1]``, ``int64`` labels."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel (the training set's statistics)."""
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        return (x - m) / s

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        """The training split ready to train on: ``(normalize(x_train), y_train)``, the
        ``(images, labels)`` pair that :func:`dynode.train.train` takes (as does the task itself)."""
        return self.normalize(self.x_train), self.y_train

    @property
    def test(self) -> tuple[Tensor, Tensor]:
        """The test split ready to evaluate on: ``(normalize(x_test), y_test)`` (normalised with
        the *training* set's statistics), e.g. ``val_data=task.test``."""
        return self.normalize(self.x_test), self.y_test

    def dataset(self, split: str = "train") -> torch.utils.data.TensorDataset:
        """A ``torch.utils.data.TensorDataset`` of ``(image, label)`` (images unnormalised)."""
        x, y = self._split(split)
        return torch.utils.data.TensorDataset(x, y)

    def loader(self, split: str = "train", *, batch_size: int = 64, shuffle: bool | None = None,
               augment: bool = False, normalize: bool = True, seed: int = 0, device=None,
               drop_last: bool = False):
        """Batches on ``device`` by tensor indexing (:class:`~dynode.stimuli.datasets.InMemoryLoader`)."""

        x, y = self._split(split)
        return InMemoryLoader(x, y, batch_size=batch_size,
                              shuffle=(split == "train") if shuffle is None else shuffle,
                              augment=augment, mean=self.mean if normalize else None,
                              std=self.std if normalize else None, seed=seed, device=device,
                              drop_last=drop_last)

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        if split == "train":
            return self.x_train, self.y_train
        if split == "test":
            return self.x_test, self.y_test
        raise ConfigurationError(f"split must be 'train' or 'test', got {split!r}")


def _class_images(name: str, n: int, size: int, g: torch.Generator, channels: int) -> Tensor:
    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)

    contrast = u(0.3, 1.0)
    if name in _ORIENT:
        jitter = size / 8
        return gabor(size, orientation=_ORIENT[name] + u(-10, 10), frequency=u(3.0, 5.0) * size / 32,
                     phase=u(0, 2 * math.pi), contrast=contrast, sigma=u(0.16, 0.22) * size,
                     center_x=u(-jitter, jitter), center_y=u(-jitter, jitter), channels=channels)
    if name == "checkerboard":
        check = u(3.0, 6.0) * size / 32
        return checkerboard(size, check=check, offset_x=u(0, 12), offset_y=u(0, 12),
                            contrast=contrast, channels=channels)
    if name == "noise":
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=g))
        return pink_noise(size, n, exponent=u(0.8, 1.4), contrast=contrast, seed=seed, channels=channels)
    raise ConfigurationError(f"unknown class {name!r}; choose from {TASK_CLASSES}")


def _make(n: int, size: int, classes: Sequence[str], g: torch.Generator, channels: int):
    k = len(classes)
    labels = torch.arange(n) % k
    labels = labels[torch.randperm(n, generator=g)]
    x = torch.empty(n, channels, size, size, dtype=torch.get_default_dtype())
    for c, name in enumerate(classes):
        idx = (labels == c).nonzero().flatten()
        if len(idx):
            x[idx] = _class_images(name, len(idx), size, g, channels)
    return x.clamp_(0.0, 1.0), labels.to(torch.int64)


def generated_task(n_train: int = 3000, n_test: int = 600, *, size: int = 32,
                   classes: Sequence[str] = DEFAULT_CLASSES, channels: int = 1, seed: int = 0) -> ImageTask:
    """A balanced classification task of generated images (no files needed).

    Classes (see :data:`TASK_CLASSES`): Gabor patches at four orientations (+-10 deg), a
    checkerboard and 1/f noise; nuisance variables drawn per image: phase (uniform), position
    (+-size/8 px), spatial frequency (3-5 cycles per 32 px), Gabor width, check size and
    offset, noise exponent, contrast (0.3-1). Train and test sets are drawn independently
    from one seeded generator; the same arguments give the same data.
    """
    classes = tuple(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ConfigurationError(f"classes must be at least two distinct names from {TASK_CLASSES}")
    unknown = [c for c in classes if c not in TASK_CLASSES]
    if unknown:
        raise ConfigurationError(f"unknown classes {unknown}; choose from {TASK_CLASSES}")
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        if not (isinstance(v, int) and v >= 1):
            raise ConfigurationError(f"{name} must be an int >= 1, got {v!r}")
    g = torch.Generator().manual_seed(int(seed))
    x_tr, y_tr = _make(n_train, size, classes, g, channels)
    x_te, y_te = _make(n_test, size, classes, g, channels)
    mean = tuple(float(m) for m in x_tr.mean(dim=(0, 2, 3)))
    std = tuple(float(s) for s in x_tr.std(dim=(0, 2, 3)))
    return ImageTask(x_tr, y_tr, x_te, y_te, classes, mean, std)

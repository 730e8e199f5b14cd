"""Training data: the global batches of an epoch (seeded order) and the check of a batch
before it runs."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.utils.data
from torch import Tensor

from dynode.errors import ConfigurationError
from dynode.guards import magnitudes
from dynode.problem import dtype_name


def as_source(data, what: str = "train_data"):
    """``data`` as the trainer reads it, or a :class:`ConfigurationError` saying what to pass.

    Taken: a :class:`dynode.stimuli.ImageTask` (its normalised train split; ``evaluate`` and
    validation use its test split), an ``(images, labels)`` pair of tensors (a list of two is
    taken as the pair; ``task.train`` / ``task.test`` are such pairs), or an iterable of
    ``(images, labels)`` batches (a ``DataLoader``, :class:`~dynode.stimuli.InMemoryLoader`).
    Refused with the fix named: one tensor, a mapping, a map-style ``Dataset`` (it yields
    single samples, not batches), anything else that is not iterable."""
    if hasattr(data, "x_train"):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(v, Tensor) for v in data):
        return tuple(data)
    fix = ("pass a dynode.stimuli.ImageTask (the task itself, or task.train / task.test), an (images, labels) "
           "pair of tensors, or an iterable of (images, labels) batches such as a DataLoader")
    if isinstance(data, (tuple, list)):
        kinds = ", ".join(type(v).__name__ for v in data[:4]) + (", ..." if len(data) > 4 else "")
        raise ConfigurationError(f"{what} is a {type(data).__name__} of {len(data)} items ({kinds}), not an "
                                 f"(images, labels) pair of tensors; {fix}")
    if isinstance(data, Tensor):
        raise ConfigurationError(f"{what} is one tensor of shape {tuple(data.shape)}; training needs the "
                                 f"labels too: {fix}")
    if isinstance(data, (str, bytes, Mapping)):
        raise ConfigurationError(f"{what} is a {type(data).__name__}; {fix}")
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        raise ConfigurationError(f"{what} is a {type(data).__name__}, a Dataset of single samples, not of "
                                 "batches; wrap it: torch.utils.data.DataLoader(dataset, batch_size=config."
                                 "batch_size, shuffle=True); for an ImageTask pass the task itself or task.train")
    if not isinstance(data, Iterable):
        raise ConfigurationError(f"{what} is a {type(data).__name__}, not data; {fix}")
    return data


def data_size(data) -> int | None:
    """The number of samples of an ImageTask or an (images, labels) pair; None for a loader."""
    if hasattr(data, "x_train"):
        return len(data.x_train)
    if isinstance(data, tuple):
        return len(data[0])
    return None


def batches(data, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
            eval_split: bool = False) -> Iterable[tuple[Tensor, Tensor]]:
    """Global batches; a shuffled order is drawn from a generator seeded by (seed, epoch)."""
    if hasattr(data, "x_train"):  # an ImageTask: normalised train or test split
        x, y = (data.x_test, data.y_test) if eval_split else (data.x_train, data.y_train)
        data = (data.normalize(x), y)
    if isinstance(data, tuple):
        x, y = data
        if len(x) != len(y):
            raise ConfigurationError(f"{len(x)} images but {len(y)} labels")
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(x), generator=g) if shuffle else torch.arange(len(x))
        return ((x[idx], y[idx]) for idx in order.split(batch_size))
    if hasattr(data, "set_epoch"):
        data.set_epoch(epoch)
    return data


@torch.no_grad()
def check_data(images, labels, where: str, n_classes) -> None:
    """Before a batch runs: images are finite tensors, labels are integer class indices of
    the readout (``0 <= y < n_classes`` unless that is None), one per image. One host read."""
    if not isinstance(images, Tensor) or not isinstance(labels, Tensor):
        raise ConfigurationError(f"{where}: the data must give (images, labels) tensors, got "
                                 f"({type(images).__name__}, {type(labels).__name__})")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ConfigurationError(f"{where}: labels are {dtype_name(labels.dtype)}; they must "
                                 "be integer class indices (labels.long())")
    if labels.dim() != 1 or len(labels) != len(images):
        raise ConfigurationError(f"{where}: {len(images)} images but labels of shape {tuple(labels.shape)}; "
                                 "give one class index per image")
    if not images.is_floating_point():
        raise ConfigurationError(f"{where}: images are {dtype_name(images.dtype)}; give "
                                 "floating images (e.g. images.float() / 255, then normalised)")
    if labels.numel() == 0:
        return
    peak, lo, hi = torch.stack([magnitudes([images])[0].double(), labels.min().double().to(images.device),
                                labels.max().double().to(images.device)]).tolist()
    if not math.isfinite(peak):
        raise ConfigurationError(f"{where}: NaN or inf pixels in the images; clean the images "
                                 "(e.g. drop those samples or torch.nan_to_num) before training")
    if lo < 0 or (isinstance(n_classes, int) and hi >= n_classes):
        raise ConfigurationError(f"{where}: labels range over {int(lo)}..{int(hi)}, but the readout has "
                                 f"{n_classes} classes (0..{n_classes - 1 if isinstance(n_classes, int) else '?'}); "
                                 "fix the labels or build the model with num_classes to match")

r"""Image data sets: CIFAR-10/100, MNIST, ImageNette, ImageNet and image folders.

Two paths:

* :func:`dataset` -> a ``torch.utils.data.Dataset`` with the standard torchvision transforms
  (training: random crop / flip; evaluation: resize / centre crop; both ``ToTensor`` and
  ``Normalize`` with the per-data-set statistics of :data:`STATS`), for a ``DataLoader``.
* :func:`load_tensors` + :class:`InMemoryLoader` (or :func:`in_memory`) -> the whole data set
  as one ``uint8`` tensor ``(N, C, H, W)`` on the device; batches, random crops and flips and
  normalisation are tensor operations on the device (no per-item Python work). This is the
  fast path for small data sets (CIFAR, MNIST, the generated task).

Files are read in their published on-disk formats: CIFAR's pickled batches
(``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta``;
``cifar-100-python/train``, ``test``, ``meta``), read with a restricted unpickler that
accepts only dicts, lists, strings, numbers and numpy arrays (no code runs); MNIST's idx
files in torchvision's layout (``MNIST/raw/train-images-idx3-ubyte``, ...); image folders
``<root>/<split>/<class>/<image>`` (ImageNet, generic), and ImageNette's archive layout
(``<root>/imagenette2-160/train/<wnid>/*.JPEG``).

A missing data set raises :class:`DatasetNotFoundError`, which says where it looked and how
to get the data (``download=True`` where torchvision can download it). Nothing is ever
downloaded unless ``download=True`` is passed.
"""

from __future__ import annotations

import io
import math
import pickle  # only through _RestrictedUnpickler below: CIFAR's published format
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dynode.errors import ConfigurationError, DynodeError

__all__ = ["STATS", "DATASETS", "DatasetNotFoundError", "dataset", "load_tensors", "standard_transform",
           "TensorImageDataset", "InMemoryLoader", "in_memory", "read_cifar"]

STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenette": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
"""Per-channel mean and standard deviation of the training images (values in [0, 1]).
ImageNette and generic image folders use ImageNet's."""

DATASETS = ("cifar10", "cifar100", "mnist", "imagenette", "imagenet", "imagefolder")
_SPLITS = {"train", "test", "val"}


class DatasetNotFoundError(DynodeError, FileNotFoundError):
    """A data set's files are not where they were looked for (the message says how to get them)."""


# ---------------------------------------------------------------------------- CIFAR
class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays (CIFAR's batches); anything else is
    refused, so a tampered file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file "
                                         "(only plain data and numpy arrays are allowed)")
        if module == "_codecs":
            import codecs
            return codecs.encode
        if name in ("ndarray", "dtype"):
            return getattr(np, name)
        try:
            from numpy._core import multiarray  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core import multiarray
        return getattr(multiarray, name)


def _load_batch(path: Path) -> dict:
    with open(path, "rb") as f:
        obj = _RestrictedUnpickler(io.BufferedReader(f), encoding="latin1").load()
    if not isinstance(obj, dict):
        raise ConfigurationError(f"{path} is not a CIFAR batch (a pickled dict); got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", names="label_names", labels="labels",
                    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", tv="CIFAR10"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     names="fine_label_names", labels="fine_labels",
                     url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", tv="CIFAR100"),
}


def _not_found(name: str, looked: Sequence[Path], how: str) -> DatasetNotFoundError:
    where = ", ".join(str(p) for p in looked)
    return DatasetNotFoundError(f"{name} not found: looked for {where}. {how}")


def _split(split: str) -> str:
    if split not in _SPLITS:
        raise ConfigurationError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    return split


def read_cifar(name: str, root, split: str = "train", *, download: bool = False
               ) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """CIFAR-10/100 from its pickled batches -> ``(uint8 (N, 3, 32, 32), int64 labels, classes)``."""
    spec = _CIFAR[name]
    root = Path(root).expanduser()
    folder = root / spec["folder"]
    files = spec["test"] if _split(split) in ("test", "val") else spec["train"]
    paths = [folder / f for f in files] + [folder / spec["meta"]]
    if download and not all(p.exists() for p in paths):
        import torchvision

        getattr(torchvision.datasets, spec["tv"])(str(root), train=split == "train", download=True)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise _not_found(name, missing,
                         f"Get it with dynode.stimuli.datasets.load_tensors({name!r}, root={str(root)!r}, "
                         f"download=True) (or dataset(..., download=True)), or download {spec['url']} "
                         f"and extract it into {root}")
    data, labels = [], []
    for p in paths[:-1]:
        batch = _load_batch(p)
        try:
            data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(v) for v in batch[spec["labels"]])
        except KeyError as exc:
            raise ConfigurationError(f"{p} lacks the key {exc} of a {name} batch") from None
    meta = _load_batch(paths[-1])
    classes = tuple(str(c) for c in meta.get(spec["names"], ()))
    images = torch.from_numpy(np.concatenate(data))
    targets = torch.tensor(labels, dtype=torch.int64)
    if len(images) != len(targets):
        raise ConfigurationError(f"{name}: {len(images)} images but {len(targets)} labels in {folder}")
    return images, targets, classes


# ---------------------------------------------------------------------------- MNIST
def _mnist(root, split: str, download: bool, transform=None):
    import torchvision

    root = Path(root).expanduser()
    raw = root / "MNIST" / "raw"
    try:
        return torchvision.datasets.MNIST(str(root), train=_split(split) == "train", download=download,
                                          transform=transform)
    except RuntimeError:
        prefix = "train" if split == "train" else "t10k"
        raise _not_found("mnist", [raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"],
                         f"torchvision's MNIST needs all four idx files (train-/t10k-images-idx3-ubyte, "
                         f"-labels-idx1-ubyte) in {raw}; get them with dataset('mnist', root={str(root)!r}, "
                         "download=True)") from None


# ---------------------------------------------------------------------------- image folders
def _folder_root(name: str, root, split: str) -> Path:
    root = Path(root).expanduser()
    split = _split(split)
    if name == "imagenette":
        cands = [root / v / split for v in ("imagenette2-160", "imagenette2-320", "imagenette2")] + [root / split]
        how = (f"Get it with dataset('imagenette', root={str(root)!r}, download=True) (torchvision's "
               "Imagenette, 160 px version), or download https://s3.amazonaws.com/fast-ai-imageclas/"
               f"imagenette2-160.tgz and extract it into {root}")
    elif name == "imagenet":
        cands = [root / split]
        how = ("ImageNet cannot be downloaded automatically: get ILSVRC2012 from https://image-net.org "
               f"(registration needed) and arrange it as {root}/train/<wnid>/*.JPEG and "
               f"{root}/val/<wnid>/*.JPEG")
    else:
        cands = [root / split]
        how = f"Put the images in {root}/{split}/<class name>/<image file> (one folder per class)"
    for c in cands:
        if c.is_dir() and any(p.is_dir() for p in c.iterdir()):
            return c
    raise _not_found(name, cands, how)


# ---------------------------------------------------------------------------- transforms
def standard_transform(name: str, split: str = "train", *, augment: bool | None = None,
                       image_size: int | None = None) -> Callable:
    """torchvision's standard pipeline for ``name``: ``[augmentation] + ToTensor + Normalize``.

    CIFAR: ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` for training. MNIST: none.
    ImageNet-like: training ``RandomResizedCrop(image_size)`` + flip; evaluation
    ``Resize(image_size * 8/7)`` + ``CenterCrop(image_size)`` (224 by default, 128 for ImageNette).
    """
    from torchvision import transforms as T

    if name not in STATS:
        raise ConfigurationError(f"unknown data set {name!r}; choose one of {DATASETS}")
    augment = (_split(split) == "train") if augment is None else augment
    mean, std = STATS[name]
    steps: list = []
    if name in ("cifar10", "cifar100", "mnist"):
        if augment:
            steps += [T.RandomCrop(28, padding=2)] if name == "mnist" else [T.RandomCrop(32, padding=4),
                                                                            T.RandomHorizontalFlip()]
    else:
        size = image_size or (128 if name == "imagenette" else 224)
        if augment:
            steps += [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        else:
            steps += [T.Resize(int(round(size * 8 / 7))), T.CenterCrop(size)]
        steps.append(T.Lambda(lambda im: im.convert("RGB")))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


class TensorImageDataset(torch.utils.data.Dataset):
    """A map-style data set over a ``uint8`` tensor ``(N, C, H, W)``: item ``i`` is
    ``(transform(PIL image), label)`` as torchvision's CIFAR/MNIST return it."""

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str] = (), transform=None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ConfigurationError("TensorImageDataset needs uint8 images (N, C, H, W)")
        self._hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        arr = self._hwc[i]
        img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        return (self.transform(img) if self.transform is not None else img), self.targets[i]


def dataset(name: str, root, split: str = "train", *, transform="standard", augment: bool | None = None,
            download: bool = False, image_size: int | None = None) -> torch.utils.data.Dataset:
    """A torch ``Dataset`` of ``(image tensor, label)`` for ``name`` in :data:`DATASETS`.

    ``transform``: ``"standard"`` (:func:`standard_transform`), ``None`` (PIL images) or a
    callable. ``download=True`` fetches CIFAR, MNIST and ImageNette through torchvision.
    """
    if name not in DATASETS:
        raise ConfigurationError(f"unknown data set {name!r}; choose one of {DATASETS}")
    if transform == "standard":
        transform = standard_transform(name, split, augment=augment, image_size=image_size)
    elif transform is not None and not callable(transform):
        raise ConfigurationError(f"transform must be 'standard', None or a callable, got {transform!r}")
    if name in _CIFAR:
        images, labels, classes = read_cifar(name, root, split, download=download)
        return TensorImageDataset(images, labels, classes, transform)
    if name == "mnist":
        return _mnist(root, split, download, transform)
    import torchvision

    if name == "imagenette" and download:
        torchvision.datasets.Imagenette(str(root), split="val" if split != "train" else "train",
                                        size="160px", download=True)
    if download and name != "imagenette":
        raise ConfigurationError(f"{name} cannot be downloaded automatically; download=True is only "
                                 "available for cifar10, cifar100, mnist and imagenette")
    folder = _folder_root(name, root, split)
    return torchvision.datasets.ImageFolder(str(folder), transform=transform)


def load_tensors(name: str, root, split: str = "train", *, download: bool = False
                 ) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """The whole data set as ``(uint8 images (N, C, H, W), int64 labels, class names)``.

    For the small data sets (CIFAR-10/100, MNIST); image folders are too large for this path
    (use :func:`dataset` with a ``DataLoader``)."""
    if name in _CIFAR:
        return read_cifar(name, root, split, download=download)
    if name == "mnist":
        ds = _mnist(root, split, download)
        return ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64), tuple(ds.classes)
    if name in DATASETS:
        raise ConfigurationError(f"{name} is an image-folder data set; the in-memory path holds only "
                                 "cifar10, cifar100 and mnist: use dataset(...) with a DataLoader")
    raise ConfigurationError(f"unknown data set {name!r}; choose one of {DATASETS}")


# ---------------------------------------------------------------------------- in-memory batches
class InMemoryLoader:
    """Batches from a whole data set held as one tensor on the device.

    Per epoch: one random permutation (if ``shuffle``), then per batch one gather
    ``images[idx]``, conversion to float (``uint8 / 255``), and, with ``augment``, a random
    crop with zero padding ``pad`` and a random horizontal flip (both one gather on the stored
    ``uint8`` batch; the padding is the value 0 before normalisation, as torchvision's
    ``RandomCrop``), then conversion and ``(x - mean) / std`` per channel in one ``addcmul``. All of
    it is tensor work on ``device``; no per-item Python. The random stream is a
    ``torch.Generator`` on the device seeded by ``seed`` (reproducible per device).

    Iterating yields ``(images float (B, C, H, W), labels int64 (B,))``.
    """

    def __init__(self, images: Tensor, labels: Tensor, *, batch_size: int = 128, shuffle: bool = True,
                 augment: bool = False, pad: int = 4, flip: bool = True, mean=None, std=None,
                 seed: int = 0, device=None, dtype=torch.float32, drop_last: bool = False):
        if images.dim() != 4:
            raise ConfigurationError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ConfigurationError(f"{len(images)} images but {len(labels)} labels")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ConfigurationError(f"batch_size must be an int >= 1, got {batch_size!r}")
        device = torch.device(device) if device is not None else images.device
        self.images = images.to(device)
        self.labels = labels.to(device=device, dtype=torch.int64)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.pad, self.flip, self.drop_last, self.dtype = int(pad), flip, drop_last, dtype
        self.device = device
        self._scale = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
        c = images.shape[1]
        if (mean is None) != (std is None):
            raise ConfigurationError("give both mean and std (or neither)")
        if mean is not None:
            m = torch.as_tensor(mean, dtype=dtype, device=device).reshape(1, -1, 1, 1)
            s = torch.as_tensor(std, dtype=dtype, device=device).reshape(1, -1, 1, 1)
            if m.shape[1] not in (1, c) or s.shape[1] not in (1, c):
                raise ConfigurationError(f"mean/std need 1 or {c} values (one per channel)")
            self._mul = (self._scale / s)  # x_float = x * scale; (x_float - m) / s = x * mul + add
            self._add = -m / s
        else:
            self._mul = torch.full((1, 1, 1, 1), self._scale, dtype=dtype, device=device)
            self._add = torch.zeros((1, 1, 1, 1), dtype=dtype, device=device)
        self._gen = torch.Generator(device=device)
        self._seed = int(seed)
        self._gen.manual_seed(self._seed)
        self._rows, self._cols = (torch.arange(n, device=device) for n in images.shape[2:])

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the shuffling/augmentation stream for ``epoch`` (reproducible resumes)."""
        self._gen.manual_seed(int(self._seed) + 1_000_003 * int(epoch))

    def _crop_flip(self, x: Tensor) -> Tensor:
        """Random crop of the zero-padded batch and random horizontal flip as ONE gather:
        output pixel ``(h, w)`` of sample ``b`` reads padded pixel
        ``(oy_b + h, ox_b + (W - 1 - w if flip_b else w))``."""
        b, c, h, w = x.shape
        p = self.pad
        if p > 0:
            x = torch.nn.functional.pad(x, (p, p, p, p))
        hp, wp = h + 2 * p, w + 2 * p
        oy = torch.randint(0, 2 * p + 1, (b, 1, 1), generator=self._gen, device=self.device)
        ox = torch.randint(0, 2 * p + 1, (b, 1, 1), generator=self._gen, device=self.device)
        cols = self._cols.view(1, 1, w)
        if self.flip:
            f = torch.rand((b, 1, 1), generator=self._gen, device=self.device) < 0.5
            cols = torch.where(f, (w - 1) - cols, cols)
        lin = (oy + self._rows.view(1, h, 1)) * wp + (ox + cols)  # (b, h, w)
        out = x.reshape(b, c, hp * wp).gather(2, lin.view(b, 1, h * w).expand(b, c, h * w))
        return out.view(b, c, h, w)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.images)
        order = (torch.randperm(n, generator=self._gen, device=self.device) if self.shuffle
                 else torch.arange(n, device=self.device))
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.images.index_select(0, idx)
            if self.augment:
                x = self._crop_flip(x)  # on the stored dtype (uint8: 4x less memory traffic)
            yield torch.addcmul(self._add, x.to(self.dtype), self._mul), self.labels.index_select(0, idx)


def in_memory(name: str, root, split: str = "train", *, batch_size: int = 128, device=None,
              augment: bool | None = None, shuffle: bool | None = None, seed: int = 0,
              download: bool = False, drop_last: bool = False) -> InMemoryLoader:
    """:func:`load_tensors` + :class:`InMemoryLoader` with the data set's :data:`STATS`;
    training splits are shuffled and augmented (crop padding 4 for CIFAR, 2 for MNIST; flips
    only for CIFAR) unless told otherwise."""
    images, labels, _ = load_tensors(name, root, split, download=download)
    train = split == "train"
    mean, std = STATS[name]
    return InMemoryLoader(images, labels, batch_size=batch_size, shuffle=train if shuffle is None else shuffle,
                          augment=train if augment is None else augment, pad=4 if name != "mnist" else 2,
                          flip=name != "mnist", mean=mean, std=std, seed=seed, device=device,
                          drop_last=drop_last)

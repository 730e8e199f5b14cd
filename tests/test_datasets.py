"""Data sets read from small files in their real on-disk formats, written here into tmp_path.

CIFAR batches are pickled dicts (the published format, written with pickle as the original
files were); MNIST uses torchvision's raw idx layout; image folders hold PNG / JPEG files.
Nothing is downloaded.
"""

import os
import pickle
import struct

import numpy as np
import pytest
import torch

from dynode.stimuli import datasets as D
from dynode.stimuli.datasets import DatasetNotFoundError, InMemoryLoader


def _cifar_batch(rng, n, n_classes, label_key):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, n_classes, size=n)]
    return {"batch_label": "testing batch", label_key: labels, "data": data,
            "filenames": [f"img_{i}.png" for i in range(n)]}


def write_cifar10(root, n=6, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = _cifar_batch(rng, n, 10, "labels")
        with open(folder / name, "wb") as f:
            pickle.dump(batches[name], f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": n}, f)
    return batches


def write_cifar100(root, n=5, seed=1):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for name in ("train", "test"):
        b = _cifar_batch(rng, n, 100, "fine_labels")
        b["coarse_labels"] = [v // 5 for v in b["fine_labels"]]
        # keys as bytes, as a pickle written by Python 2 reads back with encoding="bytes"
        out[name] = b
        with open(folder / name, "wb") as f:
            pickle.dump({k.encode(): v for k, v in b.items()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    return out


def _idx(path, array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist(root, n=7, seed=2):
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    out = {}
    for prefix in ("train", "t10k"):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        _idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        out[prefix] = (x, y)
    return out


def write_folder(root, classes=("cat", "dog"), per_class=3, size=20, ext="png", seed=3):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.{ext}")


# ----------------------------------------------------------------------------- CIFAR
def test_cifar10_pickled_batches_as_tensors(tmp_path):
    batches = write_cifar10(tmp_path)
    x, y, classes = D.load_tensors("cifar10", tmp_path, "train")
    assert x.dtype == torch.uint8 and x.shape == (30, 3, 32, 32)
    expect = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert np.array_equal(x.numpy(), expect)
    assert y.tolist() == sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert classes == tuple(f"class{i}" for i in range(10))
    xt, yt, _ = D.load_tensors("cifar10", tmp_path, "test")
    assert np.array_equal(xt.numpy(), batches["test_batch"]["data"].reshape(-1, 3, 32, 32))


def test_cifar100_fine_labels_and_bytes_keys(tmp_path):
    b = write_cifar100(tmp_path)
    x, y, classes = D.load_tensors("cifar100", tmp_path, "test")
    assert x.shape == (5, 3, 32, 32) and y.tolist() == b["test"]["fine_labels"] and len(classes) == 100


def test_cifar_dataset_with_standard_transform_matches_in_memory_path(tmp_path):
    write_cifar10(tmp_path)
    ds = D.dataset("cifar10", tmp_path, "test")  # evaluation: ToTensor + Normalize
    img, label = ds[3]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    loader = D.in_memory("cifar10", tmp_path, "test", batch_size=4)
    xb, yb = next(iter(loader))
    torch.testing.assert_close(xb[3], img, rtol=0, atol=1e-5)
    assert yb[3].item() == label
    mean, std = D.STATS["cifar10"]
    raw, _, _ = D.load_tensors("cifar10", tmp_path, "test")
    manual = (raw[0].float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(xb[0], manual, rtol=0, atol=1e-5)
    train = D.dataset("cifar10", tmp_path, "train")  # training: random crop + flip
    assert train[0][0].shape == (3, 32, 32) and len(train) == 30


def test_restricted_unpickler_refuses_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": Evil(), "labels": [0]}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        D.load_tensors("cifar10", tmp_path)


# ----------------------------------------------------------------------------- MNIST
def test_mnist_idx_files(tmp_path):
    data = write_mnist(tmp_path)
    x, y, classes = D.load_tensors("mnist", tmp_path, "train")
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.uint8
    assert np.array_equal(x[:, 0].numpy(), data["train"][0]) and y.tolist() == data["train"][1].tolist()
    ds = D.dataset("mnist", tmp_path, "test")
    img, label = ds[2]
    mean, std = D.STATS["mnist"]
    expect = (torch.from_numpy(data["t10k"][0][2]).float() / 255 - mean[0]) / std[0]
    torch.testing.assert_close(img[0], expect, rtol=0, atol=1e-5)
    assert label == int(data["t10k"][1][2])


# ----------------------------------------------------------------------------- folders
def test_image_folder_of_pngs(tmp_path):
    write_folder(tmp_path)
    ds = D.dataset("imagefolder", tmp_path, "val", image_size=16)
    assert len(ds) == 6 and ds.classes == ["cat", "dog"]
    img, label = ds[4]
    assert img.shape == (3, 16, 16) and label == 1
    train = D.dataset("imagefolder", tmp_path, "train", image_size=16)
    assert train[0][0].shape == (3, 16, 16)


def test_imagenette_archive_layout(tmp_path):
    write_folder(tmp_path / "imagenette2-160", classes=("n01440764", "n02102040"), ext="JPEG")
    ds = D.dataset("imagenette", tmp_path, "val", image_size=16)
    assert len(ds) == 6 and ds[0][0].shape == (3, 16, 16)


# ----------------------------------------------------------------------------- missing data
@pytest.mark.parametrize("name, expect", [
    ("cifar10", r"cifar-10-batches-py.*download=True"),
    ("cifar100", r"cifar-100-python.*download=True"),
    ("mnist", r"MNIST/raw.*download=True"),
    ("imagenette", r"imagenette2-160.*download=True"),
    ("imagenet", r"image-net.org"),
    ("imagefolder", r"<class name>"),
])
def test_missing_dataset_says_where_and_how(tmp_path, name, expect):
    with pytest.raises(DatasetNotFoundError, match=expect) as info:
        D.dataset(name, tmp_path / "nowhere", "train")
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "nowhere") in str(info.value)


def test_in_memory_path_rejects_folders(tmp_path):
    with pytest.raises(Exception, match="DataLoader"):
        D.load_tensors("imagenet", tmp_path)


# ----------------------------------------------------------------------------- in-memory loader
def test_in_memory_loader_covers_each_sample_once_per_epoch():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    y = torch.arange(10)
    loader = InMemoryLoader(x, y, batch_size=4, shuffle=True, seed=0)
    assert len(loader) == 3
    seen = torch.cat([yb for _, yb in loader])
    assert sorted(seen.tolist()) == list(range(10))
    for xb, yb in loader:  # images stay paired with their labels
        torch.testing.assert_close(xb[:, 0, 0, 0] * 255, yb.float())
    assert len(InMemoryLoader(x, y, batch_size=4, drop_last=True)) == 2
    a = [yb.tolist() for _, yb in InMemoryLoader(x, y, batch_size=4, seed=1)]
    b = [yb.tolist() for _, yb in InMemoryLoader(x, y, batch_size=4, seed=1)]
    assert a == b


def test_in_memory_augmentation_is_a_padded_crop_or_its_mirror():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (16, 3, 8, 8), generator=g, dtype=torch.uint8)
    loader = InMemoryLoader(x, torch.arange(16), batch_size=16, shuffle=False, augment=True, pad=2, seed=3)
    xb, _ = next(iter(loader))
    xb = (xb * 255).round().to(torch.uint8)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips, shifts = 0, set()
    for i in range(16):
        matches = [(oy, ox, f) for oy in range(5) for ox in range(5) for f in (False, True)
                   if torch.equal(xb[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, oy:oy + 8, ox:ox + 8]))]
        assert matches, f"sample {i} is not a crop of its padded image"
        flips += matches[0][2]
        shifts.add(matches[0][:2])
    assert 0 < flips < 16 and len(shifts) > 3  # augmentation actually varies

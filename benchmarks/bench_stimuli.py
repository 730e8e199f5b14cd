"""Stimulus and data-loading costs (issue 5).

Rows:

* ``stimulus per step``: evaluating a stimulus at every step time of a 40 ms run (dt 2 ms,
  20 steps, batch 32 CIFAR-sized images) against 20 Euler steps of ``nets.conv4_network()``
  (the reference for a dyrcnn(depth=4)-like step). Target: each stimulus <= 5 % of the steps.
  Contenders: a pulse (piecewise constant: cached tensors), a ramp (computed per call), and
  a pulse plus dynamic Gaussian noise redrawn every 10 ms (a new frame generated each time,
  cache of one frame, so the generation cost is paid every run).
* ``CIFAR batches``: one epoch of training batches (batch 128) from CIFAR-format files written
  into a temporary folder: torchvision ``DataLoader`` over the per-item data set with
  ``RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor + Normalize`` (what torchvision's
  CIFAR10 does per item) vs :class:`dynode.stimuli.InMemoryLoader` doing the same crop, flip
  and normalisation on the whole batch with tensor ops. Target: in-memory >= 5x faster.
  A second row compares the evaluation pipeline (``ToTensor + Normalize``, no augmentation).
"""

from __future__ import annotations

import atexit
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

import dynode as dn
import nets
from harness import Benchmark
from dynode.stimuli import DynamicNoise, Modulated, envelopes as E
from dynode.stimuli import datasets as D

BATCH = 32
DT, T_END = 2.0, 40.0


def _step_times():
    n = int(round(T_END / DT))
    return [i * DT for i in range(n)]


def _stimulus_setup(quick: bool):
    net = nets.conv4_network()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, 3, 32, 32, generator=g)
    times = _step_times()
    pulse = Modulated(images, E.pulse(10.0, 20.0), background="mean")
    ramp = Modulated(images, E.ramp(0.0, 30.0), background="mean")

    def run_steps():
        with torch.no_grad():
            dn.integrate(net, images, t_end=T_END, dt=DT)

    def evaluate(stim_factory):
        stim = stim_factory()

        def run():
            for t in times:
                stim(t)
        return run

    def noisy():
        noise = DynamicNoise("gaussian", images.shape, frame_ms=10.0, t_end=T_END, seed=0, scale=0.1,
                             cache_frames=1)
        return pulse + noise

    return {
        "conv4 Euler x20 (batch 32)": run_steps,
        "pulse stimulus x20": evaluate(lambda: pulse),
        "ramp stimulus x20": evaluate(lambda: ramp),
        "pulse + dynamic noise x20": evaluate(noisy),
    }


_TMP: list[Path] = []


def _cifar_files(n: int) -> Path:
    root = Path(tempfile.mkdtemp(prefix="dynode-bench-cifar-"))
    _TMP.append(root)
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    per = n // 5
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": name, "labels": [int(v) for v in rng.integers(0, 10, per)],
                 "data": rng.integers(0, 256, (per, 3072), dtype=np.uint8),
                 "filenames": [f"{i}.png" for i in range(per)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)  # the published CIFAR format
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return root


@atexit.register
def _cleanup() -> None:
    for p in _TMP:
        shutil.rmtree(p, ignore_errors=True)


def _loader_setup(augment: bool):
    def setup(quick: bool):
        root = _cifar_files(2000 if quick else 10000)
        ds = D.dataset("cifar10", root, "train", augment=augment)
        dl = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True, num_workers=0)
        mem = D.in_memory("cifar10", root, "train", batch_size=128, augment=augment)

        def epoch(loader):
            def run():
                for x, y in loader:
                    pass
            return run

        return {"torchvision DataLoader (per item)": epoch(dl), "in-memory tensors": epoch(mem)}
    return setup


BENCHMARKS = [
    Benchmark("stimulus per step", _stimulus_setup,
              target={"pulse stimulus x20": 0.05, "ramp stimulus x20": 0.05,
                      "pulse + dynamic noise x20": 0.05},
              note="stimulus evaluation at 20 step times vs 20 conv4 Euler steps, batch 32"),
    Benchmark("CIFAR batches, augmented", _loader_setup(True), target={"in-memory tensors": 0.2},
              note="one epoch, batch 128: RandomCrop(32,4)+flip+ToTensor+Normalize"),
    Benchmark("CIFAR batches, eval", _loader_setup(False), target={"in-memory tensors": 0.2},
              note="one epoch, batch 128: ToTensor+Normalize"),
]

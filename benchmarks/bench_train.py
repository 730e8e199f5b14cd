"""Training benchmarks: gradient checkpointing over time vs plain BPTT.

One training backward pass (forward + backward, :meth:`dynode.train.Trainer.backward`) of
``dyrcnn(depth=4)`` over 100 Euler steps (batch 32, 3x32x32, 100 classes; ``--quick``: 36
steps, batch 8). The loss reads the last 10 steps (readout ``at="every"``, reaction window),
so both contenders save only those states (``save_at`` = the loss window).

* peak memory: each run in a fresh subprocess; the baseline is the resident set after
  building the model and the batch (after ``gc`` and ``malloc_trim``), the peak is
  ``ru_maxrss`` after the run, with the peak reset to the baseline first
  (``/proc/self/clear_refs``; where that is not allowed, the peak since start, which can
  only overstate both). The number is peak - baseline in MiB. The child runs with a fixed
  glibc mmap threshold (``MALLOC_MMAP_THRESHOLD_=131072``): every tensor buffer is mapped and
  unmapped on its own, so the resident set follows the live tensors. With glibc's default
  dynamic threshold, freed buffers stay in the heap and the checkpointed run's peak RSS
  shows heap fragmentation too (provisional measurement: 0.41 of plain BPTT instead of 0.25).
* time: in this process, interleaved.

Memory model (per population, state size S): plain BPTT keeps every step's graph,
``N * g * S``; checkpointing with segments of ``s`` steps keeps ``N / s`` boundaries, each with
the state and its delayed past (``max_delay / dt + 1`` states; dyrcnn: recurrence 6 ms at
dt = 2 ms, 4 states), plus one segment's graph ``s * g * S`` during its recomputation: minimal
near ``s = sqrt(N * (d + 1) / g)``, about sqrt(N) here (``checkpoint=True``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

from harness import Benchmark

_WINDOW = 10  # loss window: the last 10 steps


def _sizes(quick: bool) -> dict:
    return dict(steps=36, batch=8, size=32) if quick else dict(steps=100, batch=32, size=32)


def _trainer(steps: int, batch: int, size: int, checkpoint):
    from dynode.models import dyrcnn
    from dynode.train import Trainer, TrainingConfig

    torch.manual_seed(0)
    net = dyrcnn(depth=4, input_shape=(3, size, size), num_classes=100, steps=steps, readout_at="every")
    dt = net.protocol.dt
    cfg = TrainingConfig(checkpoint=checkpoint, reaction_time=(steps - _WINDOW) * dt)
    trainer = Trainer(net, cfg, progress=False)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 100, (batch,))
    return trainer, x, y


_CHILD = textwrap.dedent("""
    import ctypes, gc, json, resource, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    args = json.loads(sys.argv[2])
    torch.set_num_threads(args.pop("threads"))
    from bench_train import _trainer

    def rss_kib():
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))

    trainer, x, y = _trainer(**args)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = rss_kib()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak resident set to the current one
    except OSError:
        pass
    loss, _ = trainer.backward(x, y)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print((peak - base) / 1024)
""")


def _peak_mib(quick: bool, checkpoint) -> float:
    args = dict(_sizes(quick), checkpoint=checkpoint, threads=torch.get_num_threads())
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", _CHILD, here, json.dumps(args)],
                         capture_output=True, text=True, check=True,
                         env=dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024)))
    return float(out.stdout.strip().splitlines()[-1])


def _setup_memory(quick: bool):
    return {
        "bptt": lambda: _peak_mib(quick, None),
        "checkpoint=True (sqrt N)": lambda: _peak_mib(quick, True),
        "checkpoint=5": lambda: _peak_mib(quick, 5),
        "checkpoint=20": lambda: _peak_mib(quick, 20),
    }


def _setup_time(quick: bool):
    sizes = _sizes(quick)
    runs = {}
    for name, ckpt in (("bptt", None), ("checkpoint=True (sqrt N)", True)):
        trainer, x, y = _trainer(**sizes, checkpoint=ckpt)

        def go(trainer=trainer, x=x, y=y):
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.backward(x, y)
        runs[name] = go
    return runs


BENCHMARKS = [
    Benchmark("train: peak memory (MiB) of a 100-step BPTT pass, dyrcnn(depth=4), batch 32", _setup_memory,
              target={"checkpoint=True (sqrt N)": 0.25}, metric="value",
              note="peak RSS above the built model, fresh subprocess per run; loss on the last 10 steps"),
    Benchmark("train: time of a 100-step BPTT pass (forward + backward), dyrcnn(depth=4), batch 32", _setup_time,
              target={"checkpoint=True (sqrt N)": 1.5},
              note="checkpointing recomputes each segment's forward once during backward"),
]

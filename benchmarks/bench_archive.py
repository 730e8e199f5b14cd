"""Archive rows: the cost of streaming a recording to zarr, and memory flatness.

* record_conv4: the 4-layer conv field (36/64/121/256 channels, 3x3, full 3x3 recurrence
  delayed 6 ms, batch 32, 3x32x32, dt 1 ms, tau 5 ms). Baseline: the same run with nothing
  recorded (``integrate`` under ``no_grad`` keeping only the final state), 100 steps.
  Contenders: ``simulate`` recording every step of every population (float32; lz4, and
  uncompressed) to a zarr store (8.3 MB per step). Target: at most 15 % slower.
* memory_flat: peak RSS (MiB) of a fresh process that runs ``simulate`` to zarr over
  ``t_end`` and over ``10 * t_end`` (same field, batch and blocks). Target: the long run's
  peak within 10 % of the short one's.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

import dynode as dn
from harness import Benchmark
from nets import conv4_network

HERE = Path(__file__).resolve().parent


def _record_setup(quick: bool):
    batch, t_end = (8, 20.0) if quick else (32, 100.0)
    net = conv4_network()
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    stim = dn.stimuli.Constant(x)
    tmp = tempfile.TemporaryDirectory(prefix="dynode-bench-")
    counter = itertools.count()

    def plain():
        with torch.no_grad():
            dn.integrate(net, stim, t_end=t_end, dt=1.0, save_at=[t_end])

    def to_zarr():
        path = Path(tmp.name) / f"run{next(counter)}.zarr"
        dn.simulate(net, stim, t_end=t_end, dt=1.0, record=dn.Record(), store=path, progress=False)

    def to_zarr_raw():
        path = Path(tmp.name) / f"run{next(counter)}.zarr"
        dn.simulate(net, stim, t_end=t_end, dt=1.0, record=dn.Record(), store=path, progress=False,
                    compression=None)

    to_zarr.tmp = tmp  # keep the directory alive as long as the callables
    return {"no recording": plain, "every step to zarr": to_zarr,
            "every step to zarr, uncompressed": to_zarr_raw}


_CHILD = textwrap.dedent("""
    import resource, sys, tempfile, torch
    sys.path.insert(0, sys.argv[1])
    import dynode as dn
    from nets import conv4_network
    torch.set_num_threads(int(sys.argv[4]))
    batch, t_end = int(sys.argv[2]), float(sys.argv[3])
    net = conv4_network()
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as d:
        dn.simulate(net, dn.stimuli.Constant(x), t_end=t_end, dt=1.0, store=d + "/run.zarr",
                    chunk_steps=int(sys.argv[5]), progress=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # MiB (Linux: KiB)
""")


def _peak_rss(batch: int, t_end: float, chunk: int) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(HERE), str(batch), str(t_end),
                          str(torch.get_num_threads()), str(chunk)],
                         capture_output=True, text=True, check=True, env=dict(os.environ))
    return float(out.stdout.strip().splitlines()[-1])


def _memory_setup(quick: bool):
    batch, t_end, chunk = (8, 12.0, 4) if quick else (32, 24.0, 6)
    return {f"t_end {t_end:g} ms": lambda: _peak_rss(batch, t_end, chunk),
            f"t_end {10 * t_end:g} ms": lambda: _peak_rss(batch, 10 * t_end, chunk)}


BENCHMARKS = [
    Benchmark("record_conv4", _record_setup, target={"every step to zarr": 1.15,
                                                    "every step to zarr, uncompressed": 1.15},
              note="conv4, batch 32, 100 steps, every population every step, float32"),
    Benchmark("memory_flat", _memory_setup, target={"t_end 240 ms": 1.10, "t_end 120 ms": 1.10},
              metric="value", note="peak RSS (MiB) of a fresh process, conv4 batch 32, to zarr"),
]

"""In-silico experiments: run a model through stimulus protocols into labelled archives.

A protocol (e.g. :func:`dynode.stimuli.groen2022`) is one labelled batch of conditions with
exact onsets, durations and gaps in ms; :func:`run_protocol` simulates the model through it
without gradients and streams the trajectories to a zarr archive whose ``sample`` dimension
carries the condition coordinates (``contrast``, ``duration``, ``isi``, ``image``).
:func:`groen2022_experiments` runs the three experiments of Groen et al. (2022).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from dynode.errors import ConfigurationError
from dynode.record import Record
from dynode.simulate import SimulationResult, simulate

__all__ = ["run_protocol", "groen2022_experiments", "GROEN_KINDS"]

GROEN_KINDS = ("contrast", "duration", "repetition")


def run_protocol(network, protocol, *, dt: float, solver="euler", record: Record | None = None,
                 store=None, overwrite: bool = False, progress: bool | None = None,
                 t_end: float | None = None, attrs: dict | None = None) -> SimulationResult:
    """Simulate ``network`` through ``protocol`` (a labelled stimulus with ``t_end``) and record it.

    ``record`` defaults to the mean over units of every population at every step (the
    population time course that stands in for an ECoG broadband signal).
    """
    t_end = t_end if t_end is not None else getattr(protocol, "t_end", None)
    if t_end is None:
        raise ConfigurationError("the protocol has no t_end; pass t_end= (ms)")
    record = record if record is not None else Record(reduce="mean")
    meta = {"experiment": getattr(protocol, "name", type(protocol).__name__),
            "onset_ms": getattr(protocol, "onset", None)}
    meta.update(attrs or {})
    with torch.no_grad():
        return simulate(network, protocol, t_end=float(t_end), dt=dt, solver=solver, record=record,
                        store=store, overwrite=overwrite, progress=progress, attrs=meta)


def groen2022_experiments(network, images: Tensor, out_dir, *, dt: float, solver="euler",
                          kinds: Sequence[str] = GROEN_KINDS, record: Record | None = None,
                          overwrite: bool = False, progress: bool | None = None,
                          background="grey", onset: float = 100.0) -> dict[str, Path]:
    """Run the ``kinds`` of Groen et al. (2022) (contrast, duration, repetition) on ``images``
    (``(N, C, H, W)``, already normalised as the network expects) and write one archive per
    kind, ``out_dir/groen2022-<kind>.zarr``. Returns ``{kind: path}``.

    ``onset`` (ms): the stimulus starts this long after t0; the last 100 ms before it are the
    baseline, so ``onset > 100`` leaves the network time to settle from its initial state.
    Use a ``dt`` that divides the durations (1 ms) for exact pulse lengths."""
    from dynode.stimuli import groen2022

    unknown = [k for k in kinds if k not in GROEN_KINDS]
    if unknown:
        raise ConfigurationError(f"unknown Groen 2022 experiments {unknown}; choose from {list(GROEN_KINDS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in kinds:
        protocol = groen2022(kind, images, background=background, onset=onset)
        path = out_dir / f"groen2022-{kind}.zarr"
        run_protocol(network, protocol, dt=dt, solver=solver, record=record, store=path,
                     overwrite=overwrite, progress=progress)
        paths[kind] = path
    return paths

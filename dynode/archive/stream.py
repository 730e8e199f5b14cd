"""Streaming a run into a writer: the solver's observer and the writer thread.

The solver hands every recorded state to a :class:`Streamer`. It applies each
:class:`~dynode.record.RecordPlan` (selection, reduction, storage dtype) on the device and
copies the result into a preallocated host block of ``chunk_steps`` steps (pinned memory and
non-blocking copies on a GPU: no synchronisation per step). A full block goes to a background
writer thread, which hands it to the writer (:mod:`dynode.archive.writer`) while the solver
fills the other block, so peak memory is two blocks whatever ``t_end`` is, and writing
overlaps computing. With ``observations`` (:class:`dynode.observe.ObservationRun`) each
recorded state also gives the population's observation variables (drive, LFP, BOLD), in time
order (their delay rings and haemodynamic state carry over from one recorded time to the next),
and written with the rates of the same block, so an interrupted run's archive holds them up to
its last committed step. Drive and LFP are computed in the solver's thread; where they come from
the solver's own evaluation (``observations.lagged``) a recorded time is completed when the
solver has evaluated it, i.e. at the next recorded time, and the last one by :meth:`Streamer.close`.
BOLD arrives as its float64 neural signal and is integrated in the writer thread, block by block
(``observations.host_block``). The writer thread creates the store as soon as the first state arrives
(a zarr store takes a few hundred ms to create: the solver fills its two blocks meanwhile
instead of waiting for it after the first). An idle writer thread keeps the archive's lease fresh
(:data:`~dynode.archive.lease.HEARTBEAT_S`).
"""

from __future__ import annotations

import math
import queue
import threading
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from dynode.archive.chunks import ChunkFiles, aligned_empty
from dynode.archive.layout import Block, Layout, _zarr_config, block_datasets
from dynode.archive.lease import HEARTBEAT_S
from dynode.archive.writer import MemoryArchiveWriter, ZarrArchiveWriter
from dynode.errors import ArchiveError, DynodeError

if TYPE_CHECKING:  # dynode.record builds its layout from dynode.archive.layout
    from dynode.record import RecordPlan

_BLOCK_BYTES = 16 * 2 ** 20  # default block size (all recorded populations together)
_MAX_CHUNK_STEPS = 1024


class Streamer:
    """The solver's observer: fills host blocks, hands full ones to a writer thread.

    Two block buffers rotate between the solver (filling) and the writer (writing); the
    solver waits only if the writer is a whole block behind. Writer errors surface in the
    solver's thread at the next hand-off.

    ``hold``: the solver hands over fresh tensors that it never modifies afterwards (the
    fixed-step solvers), so on the CPU, when no dtype conversion is needed, the observer
    keeps references and the writer thread copies them into the block (off the solver's
    thread). Each held tensor's version counter is checked after the copy: a state
    modified in place in the meantime is an error, never silently wrong data.
    """

    def __init__(self, plans: list[RecordPlan], inputs, input_names: tuple[str, ...],
                 chunk_steps: int | None, n_times: int, make_sink, progress, hold: bool = False,
                 observations=None):
        self.plans, self.inputs, self.input_names = plans, inputs, input_names
        self.observations = observations
        # every stored array: the rates first, then the observations' (population, variable)
        self.keys = [(p.name, "rate") for p in plans] + list(observations.keys if observations else ())
        self.chunk_steps, self.n_times = chunk_steps, n_times
        self.make_sink, self.progress = make_sink, progress
        self.hold = hold
        self.sink = None
        self._free: queue.Queue = queue.Queue()
        self._work: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._cur = None
        self._held: list[list] = []
        self._i = 0

    # called by the solver with every recorded state
    def __call__(self, t: float, state: dict[str, Tensor]) -> None:
        obs = self.observations
        if obs is not None and obs.lagged:  # the currents of t arrive with the solver's next step
            done = obs.push(t, state)
            if done is not None:
                self._record(*done)
            return
        self._record(t, state, obs(t, state) if obs is not None else [])

    def _record(self, t: float, state: dict[str, Tensor], observed: list[Tensor]) -> None:
        outs = [plan.transform(state[plan.name]) for plan in self.plans] + observed
        if self._cur is None:
            self._start(state, outs)
        bufs, times, stim = self._cur
        i = self._i
        if not self.hold:
            for buf, out in zip(bufs, outs):
                buf[i].copy_(out, non_blocking=True)
        if stim is not None:
            x = self.inputs(t)
            for j, name in enumerate(self.input_names):
                stim[i, :, j].copy_(_unit_mean(x[name], stim.shape[1]), non_blocking=True)
        times[i] = t
        if self.hold:  # commit the step only once everything above succeeded
            for held, v in zip(self._held, outs):
                held.append((v, v._version))
        self._i = i + 1
        if self._i == self.chunk_steps:
            self._hand_off()
        if self.progress is not None:
            self.progress.advance(t)

    def _start(self, state: dict[str, Tensor], outs: list[Tensor]) -> None:
        device = next(iter(state.values())).device
        batch = next(iter(state.values())).shape[0]
        dtype = self.plans[0].dtype if self.plans else torch.float32
        # the observations computed in the writer thread (BOLD) arrive as their float64 inputs
        host = {len(self.plans) + i for i in (self.observations.host_keys if self.observations else ())}
        self._host = sorted(host)
        dtypes = [torch.float64 if j in host else dtype for j in range(len(outs))]
        per_step = (sum(o.numel() * d.itemsize for o, d in zip(outs, dtypes))
                    + batch * len(self.input_names) * 4)
        if self.chunk_steps is None:
            self.chunk_steps = max(1, min(self.n_times, _MAX_CHUNK_STEPS, _BLOCK_BYTES // max(per_step, 1)))
        k = self.chunk_steps
        pin = device.type == "cuda"
        self.hold = self.hold and device.type == "cpu" and all(o.dtype == d for o, d in zip(outs, dtypes))
        # a cast to a narrower storage dtype turns values beyond its range into inf: one check
        # per block (in the writer thread) catches that before the block is written
        self._narrow = dtype.itemsize < next(iter(state.values())).dtype.itemsize
        self._shapes = [tuple(o.shape[1:]) for o in outs]
        for _ in range(2):
            bufs = [_host_block((k, *o.shape), d, pin) for o, d in zip(outs, dtypes)]
            stim = (torch.empty((k, batch, len(self.input_names)), dtype=dtype, pin_memory=pin)
                    if self.input_names else None)
            self._free.put((bufs, np.empty(k, dtype=np.float64), stim))
        self._event = torch.cuda.Event if device.type == "cuda" else None
        self.sink = self.make_sink(batch, self._shapes, self.chunk_steps)
        self._thread = threading.Thread(target=self._write_loop, name="dynode-archive-writer",
                                        daemon=True)
        self._thread.start()
        if hasattr(self.sink, "open"):  # create the store now, while the solver fills the first blocks
            self._work.put("open")
        self._cur = self._free.get()
        self._held = [[] for _ in self.keys]
        self._i = 0

    def _submit(self) -> None:
        event = None
        if self._event is not None:
            event = self._event()
            event.record()
        self._work.put((self._cur, self._i, event, self._held if self.hold else None))
        self._cur, self._i, self._held = None, 0, [[] for _ in self.keys]

    def _hand_off(self) -> None:
        if self._error is not None:
            raise self._error
        self._submit()
        while True:  # wait for a free block, but notice a failed writer
            try:
                self._cur = self._free.get(timeout=0.5)
                break
            except queue.Empty:
                if self._error is not None:
                    raise self._error from None
        if self._error is not None:
            raise self._error

    def _write_loop(self) -> None:
        while True:
            try:
                item = self._work.get(timeout=HEARTBEAT_S)
            except queue.Empty:  # the solver is busy: keep the archive's lease fresh
                if self._error is None and hasattr(self.sink, "heartbeat"):
                    try:
                        self.sink.heartbeat()
                    except BaseException as exc:  # surfaced in the solver's thread
                        self._error = exc
                continue
            if item is None:
                return
            if item == "open":
                try:
                    self.sink.open()
                except BaseException as exc:  # surfaced in the solver's thread
                    self._error = exc
                continue
            (bufs, times, stim), n, event, held = item
            try:
                if self._error is None:
                    if event is not None:
                        event.synchronize()
                    if held is not None:
                        for (pop, _), buf, refs in zip(self.keys, bufs, held):
                            if len(refs) != n:
                                raise DynodeError(f"internal: {len(refs)} held states for {n} steps")
                            _stack_into(buf[:n], [v for v, _ in refs])
                            if any(v._version != ver for v, ver in refs):
                                raise DynodeError(
                                    f"population {pop!r}: the solver modified a saved state in "
                                    "place before it was written; a solver that declares "
                                    "fresh_states = True must hand the observer new tensors")
                    arrays = [b[:n] for b in bufs]
                    if self._host:  # BOLD from its neural signals, in time order, one block at a time
                        done = self.observations.host_block(times[:n], [arrays[j].numpy() for j in self._host])
                        for j, y in zip(self._host, done):
                            arrays[j] = torch.from_numpy(y).to(bufs[0].dtype)
                    if self._narrow:
                        self._check_range(arrays, None if stim is None else stim[:n], times)
                    observed: dict[str, dict[str, np.ndarray]] = {}
                    for (pop, var), b in zip(self.keys[len(self.plans):], arrays[len(self.plans):]):
                        observed.setdefault(pop, {})[var] = b.numpy()
                    block = Block(times[:n].copy(), {p.name: b.numpy() for p, b in zip(self.plans, arrays)},
                                  None if stim is None else stim[:n].numpy(), observed)
                    self.sink.write(block)
            except BaseException as exc:  # surfaced in the solver's thread
                self._error = exc
            finally:
                item = held = None  # drop the references to the solver's states
                self._free.put((bufs, times, stim))

    def _check_range(self, arrays, stim, times) -> None:
        """Refuse a block in which a value overflowed the storage dtype (became +-inf)."""
        for what, buf in [*((f"population {pop!r}" + ("" if var == "rate" else f" ({var})"), b)
                            for (pop, var), b in zip(self.keys, arrays)),
                          ("the stimulus", stim)]:
            if buf is None or not torch.isinf(buf).any():
                continue
            bad = torch.isinf(buf).flatten(1).any(dim=1).nonzero()[:, 0]
            name = str(buf.dtype).removeprefix("torch.")
            wider = "float32" if buf.dtype == torch.float16 else "float64"
            raise ArchiveError(
                f"{what}: values beyond the range of Record(dtype={name!r}) (|x| > "
                f"{torch.finfo(buf.dtype).max:g}) at t = {times[int(bad[0])]:g}..{times[int(bad[-1])]:g} ms "
                f"would be stored as inf; record with Record(dtype={wider!r})")

    def close(self) -> None:
        """Complete the last recorded time (its observations, when they lag behind), write the
        partial last block and wait for the writer; re-raise its error."""
        obs, pending = self.observations, None
        if obs is not None and obs.lagged:
            try:
                done = obs.finish()
                if done is not None:
                    self._record(*done)
            except BaseException as exc:  # the steps before it are still written, then it is raised
                pending = exc
        self._close()
        if pending is not None:
            raise pending

    def _close(self) -> None:
        if self._thread is None:
            return
        if self._cur is not None and self._i > 0 and self._error is None:
            self._submit()
        self._work.put(None)
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise self._error


def _host_block(shape: tuple[int, ...], dtype: torch.dtype, pin: bool) -> Tensor:
    """A block buffer: page-locked for a GPU run (non-blocking copies); on the CPU page-aligned,
    so that a whole chunk is written from it to the disk in place (:mod:`dynode.archive.chunks`)."""
    if pin:
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    return torch.from_numpy(aligned_empty(math.prod(shape) * dtype.itemsize)).view(dtype).reshape(shape)


def _stack_into(out: Tensor, steps: list[Tensor]) -> None:
    """``torch.stack(steps, out=out)`` by numpy copies where the dtype allows: the writer thread
    then copies on one core, where a torch copy would start an OpenMP team of this thread's own
    beside the solver's (measured: recording conv4 every step uncompressed, 1.43x -> 1.34x)."""
    try:
        dest = out.numpy()
    except TypeError:  # bfloat16: no numpy dtype
        torch.stack(steps, out=out)
        return
    for i, v in enumerate(steps):
        np.copyto(dest[i], v.detach().numpy())


def _unit_mean(x: Tensor, batch: int) -> Tensor:
    if x.dim() == 0:
        return x.expand(batch)
    if x.shape[0] == batch:
        return x.reshape(batch, -1).mean(dim=1) if x.dim() > 1 else x
    return x.mean().expand(batch)  # an unbatched input shared by every sample


# -- writers of observation variables ---------------------------------------------------------
# ZarrArchiveWriter and MemoryArchiveWriter write a block's rates and stimulus; these add its
# observation variables (Block.observed). Used only for a layout that has some, so every
# other archive is written exactly as before.
class ObservingZarrWriter(ZarrArchiveWriter):
    """:class:`ZarrArchiveWriter` that also writes each block's observation variables, before
    the block's rates and the commit of ``steps_written`` (so a committed step has them all)."""

    _observed: dict | None = None

    def write(self, block: Block) -> None:
        self.open()
        if self._observed is None:
            root = self._root  # the writer's own store: its temporary files stay outside the store
            arrays = {(g.name, v.name): root[g.name][v.name] for g in self.layout.groups for v in g.variables}
            self._observed = {key: (arr, ChunkFiles.of(arr, self.cache_chunks)) for key, arr in arrays.items()}
        n0, k = self.steps_written, len(block)
        if k:
            whole = n0 % self.chunk_steps == 0 and k <= self.chunk_steps
            with _zarr_config():
                for (group, name), (arr, files) in self._observed.items():
                    data = block.array(group, name)
                    if data is None:
                        raise DynodeError(f"internal: the block has no {name!r} of population {group!r}")
                    if files is not None and whole:
                        files.write(n0, data)
                    else:
                        arr[n0:n0 + k] = data
        super().write(block)


class ObservingMemoryWriter(MemoryArchiveWriter):
    """:class:`MemoryArchiveWriter` that keeps each block's observation variables too."""

    def write(self, block: Block) -> None:
        self.blocks.append(block.copy())
        self.steps_written += len(block)

    def result(self) -> xr.DataTree | None:
        if not self.blocks:
            return None
        attrs = {**self.layout.attrs, **self.attrs, "status": self.status, "steps_written": self.steps_written}
        return xr.DataTree.from_dict(block_datasets(Layout(**{**self.layout.__dict__, "attrs": attrs}),
                                                    Block.concat(self.blocks)))

r"""Training by back-propagation through time (``dynode.train``).

One training step for a global batch of images ``x`` with labels ``y``:

1. optional idle warm-up: ``idle`` ms without input and without gradient; the run then
   continues from that state *with its delayed past* (``integrate(initial_state=solution)``);
2. the image is shown from ``stimulus_onset`` for ``stimulus_duration`` ms (default: to the
   end) and the network is integrated on the grid ``t_k = k dt``, ``k = 0..N``,
   ``N = t_end / dt``, with gradients;
3. loss ``L = CE + energy_weight * E + stability_weight * S`` with

   * ``CE``: for a readout ``at="every"`` the weighted cross-entropy
     ``sum_k w_k CE(logits(t_k), y)`` over the reaction window ``t_k >= onset + reaction_time``
     (inside the readout's own window, if it has one), ``w_k`` uniform or a ramp, summing to 1
     (:func:`dynode.models.losses.time_weights`); for ``at="last"``/``"mean"``: the
     cross-entropy of the one logit vector;
   * ``E = mean_{k, b, units} |r|^p`` over all populations, all ``N + 1`` saved times
     (:func:`~dynode.models.losses.energy_loss`);
   * ``S``: squared deviation after the stimulus offset from the pre-stimulus mean
     (:func:`~dynode.models.losses.stability_loss`);
4. backward, gradient clipping, optimizer step; the LR schedule steps once per epoch.

Only the states the loss needs are saved (``save_at``): the final state for ``at="last"``,
the weighted window for ``"every"``, every step when ``E`` or ``S`` is on; without ``E`` and
``S`` only the readout's population of the saved states is kept.

Long runs:

* ``checkpoint`` -- gradient checkpointing over time segments (``True``: ~sqrt(N) steps);
  the gradients equal those of plain BPTT; memory grows with the number of segments plus
  one segment's graph (each segment boundary also keeps the delayed past, ``max_delay / dt``
  states per population). On the CPU with glibc, freed buffers of the recomputed segments stay
  in the heap unless ``MALLOC_MMAP_THRESHOLD_`` is fixed (e.g. ``131072``); the process's
  resident set then follows the live tensors.
* ``tbptt`` -- truncated BPTT: segments of that many steps; the state *and its delayed past*
  are detached between segments, each segment back-propagates its part of the loss
  (``sum_k w_k CE_k`` over its times, ``E`` weighted by its share of the times), the
  gradients accumulate and the optimizer steps once per batch. The loss *value* equals the
  full-run loss; only the gradient is truncated. (``S`` needs the whole run: not with tbptt.)

Distributed (DDP): launch the training script with ``torchrun --nproc_per_node P script.py``.
When ``WORLD_SIZE > 1`` and no process group exists yet, :class:`Trainer` initialises one
itself (``env://``; backend ``nccl`` for CUDA devices, with ``cuda:LOCAL_RANK``, else ``gloo``)
and :meth:`Trainer.close` (called by :func:`train`) destroys it again; a script that creates
its own process group keeps it. The network runner is wrapped in
``DistributedDataParallel``. Every rank gets the same global batches (the same seeded
order) and takes the samples ``rank, rank + P, ...`` of each; its loss is scaled by
``P * n_local / n_global`` so that DDP's gradient average is the gradient of the global-batch
mean: the loss curve matches single-process training on the same global batch (up to
floating-point summation order). Metrics are reduced over ranks; rank 0 writes the log
and the checkpoints. TBPTT segments before the last run under ``no_sync`` (one gradient
all-reduce per batch). The wrapped forward returns a :class:`dynode.Solution` (DDP does not
look into it: ``find_unused_parameters`` is off, so every parameter must get a gradient in
every step, as in the zoo's models).

Everything that makes a run is in :class:`TrainingConfig`; checkpoints hold the weights, the
optimizer, scheduler and gradient-scaler state, the epoch, the metrics, the RNG state and
the config, and load with ``torch.load(..., weights_only=True)``. Resuming continues the same
run: the data order and the random streams are seeded per epoch, so 2 epochs straight and
1 epoch + checkpoint + resume + 1 epoch give the same weights and metrics. A trainer given the
whole resolved config of its run (``run_config=``, as ``dynode sweep`` does for each point)
stores it in its checkpoints, and resuming refuses a checkpoint made for any other run config
(naming the keys that differ), not just for another training config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from dynode.archive import check_writable
from dynode.checkpoint import is_state_dict, load_checkpoint, load_state, load_weights
from dynode.errors import CheckpointError, ConfigurationError, DivergenceError
from dynode.guards import magnitudes
from dynode.history import delay_steps
from dynode.integrate import integrate
from dynode.models.losses import classification_loss, energy_loss, stability_loss, time_weights
from dynode.models.stability import spectral_radius
from dynode.network import Network, RunProtocol
from dynode.problem import dtype_name
from dynode.solver_config import FIXED_STEP, FrozenConfig
from dynode.spec import spec_record
from dynode.stimulus import Pulse
from dynode.tolerances import TIME_RTOL

__all__ = ["TrainingConfig", "Trainer", "TrainResult", "train", "evaluate", "load_checkpoint", "load_weights",
           "canonical_json", "run_fingerprint", "config_diff"]



class TrainingConfig(FrozenConfig):
    """Everything a training run needs besides the model and the data. Times in ms."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch (split across ranks under torchrun)")
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, description="sgd only")
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "step", "cosine"] = "constant"
    step_epochs: int = Field(10, ge=1, description="schedule='step': decay every this many epochs")
    gamma: float = Field(0.1, gt=0, le=1, description="schedule='step': decay factor")
    grad_clip: float | None = Field(None, gt=0)
    max_spectral_radius: float | None = Field(
        None, gt=0, description="after every optimizer step, scale each population's recurrent "
        "operator down to this spectral radius (keeps long runs stable)")
    dt: float | None = Field(None, gt=0, description="step (ms); default: the model's protocol")
    t_end: float | None = Field(None, gt=0, description="run length (ms); default: the model's protocol")
    solver: Literal[FIXED_STEP] = "euler"
    idle: float = Field(0.0, ge=0, description="warm-up without input or gradient before t0 (ms)")
    stimulus_onset: float = Field(0.0, ge=0)
    stimulus_duration: float | None = Field(None, gt=0, description="None: until t_end")
    reaction_time: float = Field(0.0, ge=0, description="loss window starts at onset + reaction_time")
    ramp: bool = False
    energy_weight: float = Field(0.0, ge=0)
    energy_p: Literal[1, 2] = 1
    stability_weight: float = Field(0.0, ge=0)
    tbptt: int | None = Field(None, ge=1, description="truncated BPTT segment length (steps)")
    checkpoint: bool | int | None = Field(None, description="gradient checkpointing segment (steps) or True")
    amp: Literal["off", "bf16", "fp16", "auto"] = "off"
    seed: int = Field(0, ge=0, le=2**63 - 1 - 10**6, description="torch.manual_seed (epoch e uses seed + 1000 (e + 1))")
    device: str = "cpu"
    log_every: int = Field(10, ge=1, description="batches between progress-bar updates")

    @model_validator(mode="after")
    def _check(self):
        if self.stability_weight > 0 and (self.stimulus_duration is None or self.stimulus_onset <= 0):
            raise ValueError("stability_weight > 0 needs a pre-stimulus baseline (stimulus_onset > 0) "
                             "and an offset (stimulus_duration) to measure the return to baseline")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"device {self.device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from None
        if self.tbptt is not None and self.checkpoint:
            raise ValueError("choose tbptt or checkpoint, not both")
        if self.tbptt is not None and self.stability_weight > 0:
            raise ValueError("stability_weight needs the whole run (baseline and offset) in one graph; "
                             "it is not implemented with tbptt: set tbptt=None or stability_weight=0")
        if (self.checkpoint is not None and not isinstance(self.checkpoint, bool)
                and self.checkpoint < 1):
            raise ValueError(f"checkpoint must be None, True/False or a segment length >= 1 (steps), "
                             f"got {self.checkpoint}")
        return self


def canonical_json(data: Mapping[str, Any]) -> str:
    """One text per content: sorted keys, no spaces (what :func:`run_fingerprint` hashes)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def run_fingerprint(data: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a run's resolved config (JSON data)."""
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``"dotted.key: old -> new"`` for every value that differs between two configs given as
    JSON data (a key one of them lacks reads ``<unset>``)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                out.append(f"{key}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}")
            else:
                out += config_diff(old[k], new[k], key)
        return out
    return [] if old == new else [f"{prefix or '<top>'}: {old!r} -> {new!r}"]


@dataclass
class TrainResult:
    """Metrics per epoch (the JSON-lines log as dicts)."""

    history: list[dict] = field(default_factory=list)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def _init_distributed(device: str):
    """The ``torch.distributed`` module when a process group is (or, under torchrun, is now)
    initialised; None for a single process. Returns (dist, created)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_available():
        if world > 1:
            raise ConfigurationError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        return None, False
    if dist.is_initialized():
        return dist, False
    if world <= 1:
        return None, False
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ConfigurationError(f"WORLD_SIZE={world} but {key} is not set; launch with torchrun "
                                     "or call torch.distributed.init_process_group yourself")
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist, True


class _Runner(nn.Module):
    """One forward pass = integrate the network over one time segment (DDP wraps this)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, stimulus, *, t0: float, t_end: float, dt: float, solver: str, save_at,
                initial_state, checkpoint):
        return integrate(self.network, stimulus, t0=t0, t_end=t_end, dt=dt, solver=solver,
                         save_at=save_at, initial_state=initial_state, checkpoint=checkpoint)


def _resolve_device(name: str) -> torch.device:
    """``name`` as a torch device this machine has (``"cuda"``: the current CUDA device)."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigurationError(f"device {name!r} is not a torch device; use 'cpu', 'cuda' or "
                                 "'cuda:N'") from None
    if dev.type == "meta":
        raise ConfigurationError("device 'meta' holds no values and cannot train; use 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError(f"device {name!r}: this machine has no usable CUDA device "
                                     "(torch.cuda.is_available() is False); use device 'cpu'")
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ConfigurationError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                                     f"device(s), numbered from 0")
        return torch.device("cuda", index)
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as exc:
        raise ConfigurationError(f"device {name!r} is not available here ({str(exc).splitlines()[0]}); "
                                 "use 'cpu' or 'cuda'") from None
    return dev


def _steps(length: float, dt: float, what: str) -> int:
    n = delay_steps(length, dt)  # length == n dt, to the time tolerance
    if n is None:
        raise ConfigurationError(f"{what} = {length:g} ms is not a whole number of steps dt = {dt:g} ms")
    return n


class Trainer:
    """Trains ``network`` (a :class:`dynode.Network` with a readout) under ``config``.

    ``log``: a JSON-lines file (one row per epoch, rewritten from the run's history when
    training starts or resumes); ``checkpoint_dir``: ``last.pt`` written after every epoch.
    ``progress``: a bar over the batches (default: when stderr is a terminal) and one line per
    epoch on stderr (also off a terminal); ``False`` silences both. ``run_config``: the whole
    resolved config of the run this training is part of, as JSON data (``dynode sweep`` gives
    each point's ``RunConfig`` without its ``output``); it is saved in the checkpoints, and
    :meth:`resume` then takes only a checkpoint saved with the same one.
    """

    def __init__(self, network: nn.Module, config: TrainingConfig, *, log: str | Path | None = None,
                 checkpoint_dir: str | Path | None = None, progress: bool | None = None,
                 run_config: Mapping[str, Any] | None = None):
        readout = getattr(network, "readout", None)
        if readout is None:
            raise ConfigurationError("the network has no readout; attach one with network.set_readout(...) "
                                     "(the zoo's models have one)")
        self.config = config
        self._run_json = None if run_config is None else canonical_json(run_config)
        proto = network.protocol if isinstance(network, Network) else RunProtocol()
        self.dt = float(config.dt if config.dt is not None else proto.dt or 0)
        self.t_end = float(config.t_end if config.t_end is not None else proto.t_end or 0)
        # the stimulus window: the config's if given, else the model's protocol (e.g. CordsNet)
        given = config.model_fields_set & {"stimulus_onset", "stimulus_duration"}
        self.onset, self.duration = ((config.stimulus_onset, config.stimulus_duration)
                                     if given or proto.stimulus_onset is None else
                                     (proto.stimulus_onset, proto.stimulus_duration))
        if not self.dt or not self.t_end:
            raise ConfigurationError("training needs dt and t_end (ms): set them in the TrainingConfig "
                                     "or use a zoo model (network.protocol)")
        self.n_steps = _steps(self.t_end, self.dt, "t_end")
        self.n_idle = _steps(config.idle, self.dt, "idle")
        _resolve_device(config.device)  # a device this machine has, before any process group
        self.dist, self._owns_group = _init_distributed(config.device)
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1
        device = config.device
        if self.dist and device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', self.rank % max(torch.cuda.device_count(), 1)))}"
        self.device = _resolve_device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(config.seed)
        self.network = network.to(self.device)
        self._spec = spec_record(network)  # the model as data, for checkpoints (dn.load_model)
        self.readout = readout
        self._plan_losses()
        runner: nn.Module = _Runner(self.network)
        if self.dist:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            runner = DistributedDataParallel(runner, device_ids=ids, broadcast_buffers=False)
        self.runner = runner
        params = [p for p in self.network.parameters() if p.requires_grad]
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay)
        elif config.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        if config.schedule == "step":
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, config.step_epochs, config.gamma)
        elif config.schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, config.epochs)
        else:
            self.scheduler = None
        self.amp_dtype = self._amp_dtype(config.amp)
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.amp_dtype == torch.float16 else None)
        self.epoch = 0
        self._optimizer_steps = 0
        self.result = TrainResult()
        self.log_path = Path(log) if log is not None else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if self.rank == 0:  # before the first epoch: an epoch's work must not be lost at its end
            if self.checkpoint_dir is not None:
                check_writable(self.checkpoint_dir, f"checkpoint_dir {str(self.checkpoint_dir)!r}")
            if self.log_path is not None:
                if self.log_path.is_dir():
                    raise ConfigurationError(f"log {str(self.log_path)!r} is a folder; give a file path "
                                             "(e.g. train.jsonl inside it)")
                check_writable(self.log_path.parent, f"the log's folder {str(self.log_path.parent)!r}")
        self.progress = sys.stderr.isatty() if progress is None else progress
        # off a terminal (a log file, a batch job) no bar is drawn, but each epoch still gets a
        # plain line on stderr; progress=False silences both
        self.epoch_lines = progress is not False

    # -- set-up helpers ------------------------------------------------------------------
    def _amp_dtype(self, amp: str):
        if amp == "off":
            return None
        if amp == "auto":
            if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
                return torch.bfloat16
            return None
        if amp == "fp16" and self.device.type != "cuda":
            raise ConfigurationError("amp='fp16' needs a CUDA device; use 'bf16' (CPU and recent GPUs) or 'off'")
        return torch.bfloat16 if amp == "bf16" else torch.float16

    def _plan_losses(self) -> None:
        """Which grid steps the loss reads, with which weights, and the TBPTT segments."""
        cfg, ro, dt, n = self.config, self.readout, self.dt, self.n_steps
        self.at = getattr(ro, "at", "last")
        window = getattr(ro, "window", None)

        def in_window(k: int) -> bool:
            return window is None or window[0] - TIME_RTOL <= k * dt <= window[1] + TIME_RTOL

        self._read_steps = [k for k in range(n + 1) if in_window(k)]  # the times a decoder returns
        self._read_set = frozenset(self._read_steps)
        if self.at in ("every", "mean") and not self._read_steps:
            raise ConfigurationError(f"the readout window {window} ms holds no step of the run "
                                     f"(0 .. {self.t_end:g} ms, dt = {dt:g})")
        self._ce_weight: dict[int, float] = {}
        if self.at == "every":
            w = time_weights([k * dt for k in self._read_steps], onset=self.onset,
                             reaction_time=cfg.reaction_time, ramp=cfg.ramp)
            self._ce_weight = {k: float(x) for k, x in zip(self._read_steps, w.tolist()) if x > 0}
        elif cfg.reaction_time > 0 or cfg.ramp:
            raise ConfigurationError(f"reaction_time/ramp weight the loss over time and need a readout "
                                     f"at='every'; this network's readout is at={self.at!r}")
        self._save_all = cfg.energy_weight > 0 or cfg.stability_weight > 0
        # the activity penalty is on the model's areas, not on the normalization pools or
        # adaptation variables that components add (they are not extra spikes to pay for)
        areas = self.network.areas() if isinstance(self.network, Network) else None
        self._energy_of = {a: 1.0 for a in areas} if areas else 1.0
        if cfg.stability_weight > 0:
            off = self.onset + self.duration
            if off >= self.t_end - TIME_RTOL:
                raise ConfigurationError(f"stability_weight: the stimulus ends at {off:g} ms, not before "
                                         f"t_end = {self.t_end:g} ms; nothing to measure after the offset")
        if self.onset >= self.t_end:
            raise ConfigurationError(f"stimulus_onset {self.onset:g} ms is not before t_end "
                                     f"{self.t_end:g} ms")
        seg = cfg.tbptt
        self._bounds = [0, n] if seg is None else list(range(0, n, seg)) + [n]
        last_a = self._bounds[-2]
        if self.at == "every" and not any(k > last_a for k in self._ce_weight) and seg is not None:
            raise ConfigurationError(f"tbptt={seg}: the last segment ({last_a * dt:g} .. {self.t_end:g} ms) "
                                     "holds no time of the loss window; shorten the window or the segments")
        if self.at == "mean" and seg is not None and self._read_steps[0] <= last_a:
            raise ConfigurationError(f"tbptt={seg}: a readout at='mean' must average inside the last segment "
                                     f"({last_a * dt:g} .. {self.t_end:g} ms), but its window is {window}")

    def _save_at(self, a: int, b: int, first: bool) -> list[float] | None:
        """Save times (ms) of the segment of steps a..b (a only for the first segment)."""
        lo = a if first else a + 1
        if self._save_all:
            return None if (first and b == self.n_steps and a == 0) else [k * self.dt for k in range(lo, b + 1)]
        if self.at == "every":
            ks = [k for k in range(lo, b + 1) if k in self._ce_weight]
        elif self.at == "mean":
            ks = [k for k in range(lo, b + 1) if k in self._read_steps]
        else:
            ks = []
        if b not in ks:
            ks.append(b)  # the final state (at='last', accuracy) and never an empty save list
        return [k * self.dt for k in ks]

    def _stimulus(self, images: Tensor):
        name = self.network.input_names()[0]
        if self.onset == 0 and self.duration is None:
            return {name: images}
        duration = self.duration if self.duration is not None else math.inf
        return Pulse(self.onset, duration, {name: images})

    def _warm_up(self, batch: int):
        """Idle run from ``-idle`` to 0 ms without input and without gradient (or None)."""
        if self.n_idle == 0:
            return None
        with torch.no_grad():
            zeros = {n: torch.zeros(batch, *s, device=self.device)
                     for n, s in self.network.input_shapes().items()}
            return integrate(self.network, zeros, t0=-self.config.idle, t_end=0.0, dt=self.dt,
                             solver=self.config.solver, save_at=[0.0])

    # -- losses ---------------------------------------------------------------------------
    def _drop_unread(self, sol):
        """Free the saved trajectories the loss does not read (all but the readout's
        population, unless the energy or stability terms read every population)."""
        if self._save_all:
            return sol
        keep = self.readout.population if self.at != "last" else None
        return replace(sol, states={k: v for k, v in sol.states.items() if k == keep})

    def _segment_loss(self, sol, labels: Tensor, last: bool) -> tuple[Tensor | None, Tensor | None]:
        """This segment's part of the loss, and the final logits (last segment only)."""
        cfg = self.config
        loss, final = None, None
        if self.at == "every":
            steps = [round(float(t) / self.dt) for t in sol.ts.tolist()]
            steps = [k for k in steps if k in self._read_set]
            w = [self._ce_weight.get(k, 0.0) for k in steps]
            if any(w) or last:
                logits = self.network.decode(sol)
                if any(w):
                    loss = classification_loss(logits.float(), labels,
                                               weights=torch.tensor(w, dtype=torch.float32))
                final = logits[-1] if last else None
        elif last:
            logits = self.network.decode(sol)
            loss = nn.functional.cross_entropy(logits.float(), labels)
            final = logits
        if cfg.energy_weight > 0:
            share = len(sol.ts) / (self.n_steps + 1)  # this segment's share of the N + 1 times
            e = (cfg.energy_weight * share) * energy_loss(sol.states, p=cfg.energy_p, weights=self._energy_of)
            loss = e if loss is None else loss + e
        if cfg.stability_weight > 0:
            s = cfg.stability_weight * stability_loss(
                sol.states, sol.ts, baseline=(0.0, self.onset),
                after=self.onset + self.duration)
            loss = s if loss is None else loss + s
        return loss, final

    # -- one batch -------------------------------------------------------------------------
    def backward(self, images: Tensor, labels: Tensor, *, scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """Forward and backward on a (local) batch, gradients *accumulated* into ``.grad``
        (multiplied by ``scale``); returns the batch-mean loss and the number of correct
        final predictions (tensors; no host sync)."""
        cfg = self.config
        images, labels = images.to(self.device), labels.to(self.device)
        stim = self._stimulus(images)
        state = self._warm_up(images.shape[0])
        amp = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
               else contextlib.nullcontext())
        total = torch.zeros((), device=self.device)
        final = None
        segments = list(zip(self._bounds, self._bounds[1:]))
        for i, (a, b) in enumerate(segments):
            last = i == len(segments) - 1
            sync = self.runner.no_sync() if (self.dist and not last) else contextlib.nullcontext()
            with sync:
                with amp:
                    sol = self.runner(stim, t0=a * self.dt, t_end=b * self.dt, dt=self.dt, solver=cfg.solver,
                                      save_at=self._save_at(a, b, i == 0), initial_state=state,
                                      checkpoint=cfg.checkpoint)
                    sol = self._drop_unread(sol)
                    loss, final_i = self._segment_loss(sol, labels, last)
                if loss is not None:
                    scaled = loss * scale
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                    total = total + loss.detach()
            if last:
                final = final_i
            else:  # truncate: the next segment starts from a detached state and delayed past
                state = replace(sol, tail=sol.tail.detach(), states={},
                                final_state={k: v.detach() for k, v in sol.final_state.items()})
        correct = (final.detach().argmax(-1) == labels).sum()
        return total, correct

    def _local(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return (x[self.rank::self.world], y[self.rank::self.world]) if self.world > 1 else (x, y)

    def step(self, images: Tensor, labels: Tensor) -> tuple[float, float]:
        """One optimisation step on a *global* batch (each rank takes its share);
        returns the loss and accuracy of the global batch."""
        cfg = self.config
        n_global = len(labels)
        if n_global < self.world:
            raise ConfigurationError(f"a batch of {n_global} samples cannot be split over {self.world} "
                                     "processes; choose batch_size (and data size) so every batch has "
                                     "at least one sample per process")
        self._check_data(images, labels, f"the batch of epoch {self.epoch + 1}")
        x, y = self._local(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss, correct = self.backward(x, y, scale=self.world * len(y) / n_global)
        except DivergenceError as exc:
            if self._optimizer_steps == 0:
                raise
            raise DivergenceError(  # finite data: the weights the optimizer made are a suspect too
                f"{str(exc).splitlines()[0]} (training: after {self._optimizer_steps} optimizer steps with "
                f"{cfg.optimizer} lr={cfg.lr:g}; if the first batches ran, the updates may have pushed the "
                "weights there: lower training.lr, or set training.grad_clip / max_spectral_radius)",
                population=exc.population, t_range=exc.t_range, dt_over_tau=exc.dt_over_tau) from exc
        if cfg.grad_clip is not None:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.network.parameters(), cfg.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._optimizer_steps += 1
        finite = self._finite_weights()  # read with the loss below: no extra host read
        if cfg.max_spectral_radius is not None:
            self._check_weights(finite)  # before the projection reads them
            self.constrain_recurrence(cfg.max_spectral_radius)
        loss_sum, correct, bad = self._reduce(loss.double() * len(y), correct.double(), (~finite).sum())
        if bad:
            self._check_weights(finite)  # names the parameters and says what to change
        return loss_sum / n_global, correct / n_global

    def _trainable(self) -> list[tuple[str, Tensor]]:
        return [(n, p) for n, p in self.network.named_parameters() if p.requires_grad]

    def _finite_weights(self) -> Tensor:
        """Whether each trainable parameter (:meth:`_trainable` order) holds only finite
        values, as a boolean tensor on the device (no read)."""
        params = [p for _, p in self._trainable()]
        return torch.isfinite(magnitudes(params)) if params else torch.ones(0, dtype=torch.bool, device=self.device)

    @torch.no_grad()
    def _check_data(self, images, labels, where: str) -> None:
        """Before a batch runs: images are finite tensors, labels are integer class indices of
        the readout (``0 <= y < num_classes``), one per image. One host read."""
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
        n_classes = getattr(self.readout, "num_classes", None)
        if lo < 0 or (isinstance(n_classes, int) and hi >= n_classes):
            raise ConfigurationError(f"{where}: labels range over {int(lo)}..{int(hi)}, but the readout has "
                                     f"{n_classes} classes (0..{n_classes - 1 if isinstance(n_classes, int) else '?'}); "
                                     "fix the labels or build the model with num_classes to match")

    def _check_weights(self, finite: Tensor) -> None:
        """After an optimizer step: the weights are finite (``finite`` from
        :meth:`_finite_weights`, one host read), else the optimizer diverged on finite data, and
        the checkpoint on disk is kept as it was."""
        bad = [n for (n, _), good in zip(self._trainable(), finite.tolist()) if not good]
        if bad:
            cfg = self.config
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise ConfigurationError(
                f"optimizer step {self._optimizer_steps} (epoch {self.epoch + 1}) made the weights NaN/inf "
                f"({bad[0]!r}{more}) from finite data: the optimizer diverged; lower training.lr (now "
                f"{cfg.lr:g} with {cfg.optimizer}) or set training.grad_clip")

    @torch.no_grad()
    def constrain_recurrence(self, rho_max: float) -> dict[str, float]:
        """Project every self-connection ``W_p`` of the network onto ``rho(W_p) <= rho_max``.

        ``rho`` is estimated by power iteration (:func:`dynode.models.stability.spectral_radius`);
        when it exceeds ``rho_max`` every ``weight`` of the operator is multiplied by
        ``rho_max / rho``. For a sum of maps this gives ``rho_max``, for a composition of maps
        less, so the bound always holds. The linearised dynamics
        ``tau dr/dt = -r + Phi'(0) W r`` then stay stable for ``Phi'(0) rho_max < 1`` (relu: 1).
        Returns the radii before projection.
        """
        radii = {}
        for name, pop in self.network.populations.items():
            op = pop.incoming[name] if name in pop.incoming else None
            if op is None:
                continue
            rho = spectral_radius(op, pop.shape, iters=40, tol=1e-3)
            radii[name] = rho
            if rho > rho_max:
                for pname, p in op.named_parameters():
                    if pname.split(".")[-1] == "weight":
                        p.mul_(rho_max / rho)
        return radii

    def _reduce(self, *values: Tensor) -> tuple[float, ...]:
        """Sum over ranks (one all-reduce, one host read)."""
        t = torch.stack([v.to(self.device, torch.float64) for v in values])
        if self.dist:
            self.dist.all_reduce(t)
        return tuple(float(v) for v in t.cpu())

    # -- epochs ------------------------------------------------------------------------------
    def fit(self, train_data, val_data=None, *, until: int | None = None) -> TrainResult:
        """Train for the remaining epochs (up to epoch ``until``, default ``config.epochs``:
        stopping early and resuming later gives the same run). Data: an ``(images, labels)``
        pair of tensors, a :class:`dynode.stimuli.ImageTask` (normalised train split;
        ``evaluate`` uses its test split), or any iterable of ``(images, labels)`` global
        batches (with ``set_epoch(epoch)`` for a reproducible order)."""
        cfg = self.config
        stop = cfg.epochs if until is None else min(int(until), cfg.epochs)
        from tqdm.auto import tqdm

        n_data = _size(train_data)
        loader_batch = getattr(train_data, "batch_size", None)
        if n_data is None and loader_batch is not None and loader_batch != cfg.batch_size:
            raise ConfigurationError(f"the data loader makes batches of {loader_batch} but the config says "
                                     f"batch_size={cfg.batch_size}; make them equal")
        if n_data is not None and 0 < n_data % cfg.batch_size < self.world:
            raise ConfigurationError(f"{n_data} samples in batches of {cfg.batch_size} leave a last batch of "
                                     f"{n_data % cfg.batch_size}, fewer than the {self.world} processes; "
                                     "change batch_size")
        if isinstance(train_data, tuple) and len(train_data) == 2:  # all of it, before the first epoch
            self._check_data(*train_data, "training data")
        self._write_log()
        while self.epoch < stop:
            epoch = self.epoch
            torch.manual_seed(cfg.seed + 1000 * (epoch + 1))
            self.network.train()
            t_start = time.perf_counter()
            n, loss_sum, correct_sum = 0, 0.0, 0.0
            batches = _batches(train_data, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch)
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not self.progress or self.rank != 0,
                       leave=False, total=(math.ceil(n_data / cfg.batch_size) if n_data is not None
                                              else len(train_data) if hasattr(train_data, "__len__") else None))
            for i, (x, y) in enumerate(bar):
                loss, acc = self.step(x, y)
                n += len(y)
                loss_sum += loss * len(y)
                correct_sum += acc * len(y)
                if i % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{loss_sum / n:.3f}", acc=f"{correct_sum / n:.3f}")
            bar.close()
            if self.scheduler is not None:
                self.scheduler.step()
            self.epoch += 1
            row = {"epoch": self.epoch, "train_loss": loss_sum / max(n, 1), "train_acc": correct_sum / max(n, 1),
                   "lr": self.optimizer.param_groups[0]["lr"], "time_s": time.perf_counter() - t_start}
            if val_data is not None:
                row.update({f"val_{k}": v for k, v in self.evaluate(val_data).items()})
            self.result.history.append(row)
            if self.rank == 0:
                if self.log_path is not None:
                    with self.log_path.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
                if self.checkpoint_dir is not None:
                    self.save(self.checkpoint_dir / "last.pt")
                if self.epoch_lines:
                    print(f"epoch {self.epoch}/{cfg.epochs}: " + " ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "epoch"),
                        file=sys.stderr, flush=True)
        return self.result

    def _write_log(self) -> None:
        """Start the log from the run's history (fresh run: empty; resumed: its epochs)."""
        if self.rank != 0 or self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as fh:
            for row in self.result.history:
                fh.write(json.dumps(row) + "\n")

    @torch.no_grad()
    def evaluate(self, data) -> dict:
        """Loss and accuracy (readout at the end of the run) on ``data`` without gradient;
        an :class:`~dynode.stimuli.ImageTask` is evaluated on its test split. Under DDP the
        ranks share each batch and the result is reduced."""
        was_training = self.network.training
        self.network.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        n = 0
        amp = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
               else contextlib.nullcontext())
        for x, y in _batches(data, self.config.batch_size, shuffle=False, seed=0, epoch=0, eval_split=True):
            n += len(y)
            x, y = self._local(x, y)
            if len(y) == 0:
                continue
            x, y = x.to(self.device), y.to(self.device)
            with amp:
                sol = integrate(self.network, self._stimulus(x), t0=0.0, t_end=self.t_end, dt=self.dt,
                                solver=self.config.solver, save_at=self._save_at(0, self.n_steps, True),
                                initial_state=self._warm_up(x.shape[0]))
                loss, final = self._segment_loss(self._drop_unread(sol), y, True)
            loss_sum += loss.double() * len(y)
            correct += (final.argmax(-1) == y).sum()
        self.network.train(was_training)
        loss_sum, correct = self._reduce(loss_sum, correct)
        return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1)}

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Weights, optimizer/scheduler/scaler state, epoch, metrics, RNG and config
        (loadable with ``weights_only=True``); written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "param_names": self._param_names(),  # the optimizer state's order, by name
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "epoch": self.epoch,
            "history": json.dumps(self.result.history),
            "config": self.config.model_dump_json(),
            **({} if self._run_json is None else {"run_config": self._run_json}),
            **self._spec,  # "spec" (JSON, see dynode.spec) and "spec_error" (why there is none)
            "rng": torch.get_rng_state(),
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # never a half-written checkpoint
        return path

    def resume(self, path: str | Path) -> "Trainer":
        """Continue the run saved in ``path`` (same config required). A trainer made with
        ``run_config`` requires the checkpoint to hold the same run config: one made for another
        (or that records none) is a :class:`CheckpointError` naming the keys that differ, and
        nothing is loaded."""
        ckpt = load_checkpoint(path)
        missing = [k for k in ("model", "optimizer", "epoch", "config", "history", "rng") if k not in ckpt]
        if missing:
            if is_state_dict(ckpt):
                raise CheckpointError(
                    f"{path} is a plain state_dict (weights only), not a training checkpoint: resuming needs "
                    "the optimizer, epoch, RNG and config that Trainer.save / dynode train write (last.pt); "
                    "to start a new run from these weights, load them with dynode.train.load_weights "
                    "(model.weights in a config)")
            raise CheckpointError(f"{path} is not a dynode training checkpoint (it lacks {missing}); resume "
                                  "from the last.pt that dynode train writes")
        if self._run_json is not None:
            self._check_run_config(ckpt.get("run_config"), path)
        try:
            saved = TrainingConfig.model_validate_json(ckpt["config"])
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            raise CheckpointError(f"{path}: the training config stored in it does not read as this "
                                  f"version's TrainingConfig ({str(exc).splitlines()[0][:160]}); start a new "
                                  "run, or resume with the dynode version that wrote it") from None
        if saved != self.config:
            diff = {k for k in TrainingConfig.model_fields
                    if getattr(saved, k) != getattr(self.config, k)}
            raise ConfigurationError(f"the checkpoint {path} was made with another config (differs in "
                                     f"{sorted(diff)}); resume with the same config")
        if not is_state_dict(ckpt["model"]):
            raise CheckpointError(f"{path}: its 'model' entry is not a state_dict (names -> tensors)")
        load_state(self.network, ckpt["model"], path)
        try:
            self.optimizer.load_state_dict(self._by_name(ckpt["optimizer"], ckpt.get("param_names"), path))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: its optimizer state does not fit this network's parameters "
                                  f"({str(exc).splitlines()[0][:160]}); it was saved for another model") from None
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        self.result = TrainResult(json.loads(ckpt["history"]))
        torch.set_rng_state(ckpt["rng"])
        return self

    def _check_run_config(self, saved: Any, path) -> None:
        """The checkpoint's run config (canonical JSON) must be this trainer's."""
        if saved == self._run_json:
            return
        if saved is None:
            raise CheckpointError(f"{path} does not record the run config it was made with (plain training or "
                                  "an older dynode wrote it), so it cannot be shown to belong to this run; move "
                                  "it aside to start this run afresh")
        try:
            old = json.loads(saved)
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: its 'run_config' entry is not JSON text; move it aside to start this "
                                  "run afresh") from None
        diff = config_diff(old, json.loads(self._run_json))
        if not diff:  # the same values written otherwise (1 and 1.0)
            return
        raise CheckpointError(f"the checkpoint {path} was made for another run config (it differs in "
                              f"{len(diff)} value(s): {'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); "
                              "resume with the config it was made with, or move it aside to start this run "
                              "afresh")

    def _param_names(self) -> list[str]:
        return [n for n, p in self.network.named_parameters() if p.requires_grad]

    def _by_name(self, opt_state: dict, saved_names, path) -> dict:
        """The saved optimizer state re-indexed to this network's parameter order. The state is
        kept by position; a network rebuilt from a spec (or by another dynode version) may
        register the same parameters in another order, and momentum would then be applied to
        the wrong tensors. Checkpoints without names are taken as they are."""
        names = self._param_names()
        if saved_names is None or list(saved_names) == names:
            return opt_state
        if sorted(saved_names) != sorted(names):
            raise CheckpointError(f"{path}: its optimizer state is for the parameters {len(saved_names)} "
                                  f"named in it, not this network's {len(names)}; it was saved for another model")
        new_index = {n: i for i, n in enumerate(names)}
        old_to_new = {i: new_index[n] for i, n in enumerate(saved_names)}
        groups = opt_state["param_groups"]
        if len(groups) != 1:  # dynode's trainer uses one group
            raise CheckpointError(f"{path}: an optimizer state with {len(groups)} parameter groups")
        return {"state": {old_to_new[i]: v for i, v in opt_state["state"].items()},
                "param_groups": [dict(groups[0], params=list(range(len(names))))]}

    def close(self) -> None:
        """Destroy the process group if this trainer created it (under torchrun)."""
        if self._owns_group and self.dist is not None and self.dist.is_initialized():
            self.dist.destroy_process_group()
        self._owns_group = False


def _size(data) -> int | None:
    if hasattr(data, "x_train"):
        return len(data.x_train)
    if isinstance(data, tuple):
        return len(data[0])
    return None


def _batches(data, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
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


def train(network: nn.Module, train_data, config: TrainingConfig | dict | None = None, *, val_data=None,
          log=None, checkpoint_dir=None, resume=None, progress: bool | None = None) -> TrainResult:
    """Train ``network`` on ``train_data`` (see :meth:`Trainer.fit`); returns the metrics."""
    cfg = config if isinstance(config, TrainingConfig) else TrainingConfig.model_validate(config or {})
    trainer = Trainer(network, cfg, log=log, checkpoint_dir=checkpoint_dir, progress=progress)
    try:
        if resume is not None:
            trainer.resume(resume)
        return trainer.fit(train_data, val_data)
    finally:
        trainer.close()


def evaluate(network: nn.Module, data, config: TrainingConfig | dict | None = None) -> dict:
    """Loss and accuracy of ``network`` on ``data`` under the run settings of ``config``."""
    cfg = config if isinstance(config, TrainingConfig) else TrainingConfig.model_validate(config or {})
    trainer = Trainer(network, cfg, progress=False)
    try:
        return trainer.evaluate(data)
    finally:
        trainer.close()

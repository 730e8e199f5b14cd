r"""Training by back-propagation through time (``dynode.train``).

One training step for a batch of images ``x`` with labels ``y``:

1. optional idle warm-up: ``idle`` ms without input and without gradient; the run then
   continues from that state *with its delayed past* (``integrate(initial_state=solution)``);
2. the image is shown from ``stimulus_onset`` for ``stimulus_duration`` ms (default: to the
   end) and the network is integrated to ``t_end`` with gradients;
3. loss ``L = CE_window + energy_weight * E + stability_weight * S`` with

   * ``CE_window``: cross-entropy of the readout over the reaction window
     ``t >= onset + reaction_time`` (readout ``at="every"``; ``"last"``/``"mean"`` give one
     logit vector), uniform or ramp weights (:func:`dynode.models.losses.classification_loss`);
   * ``E``: mean ``|r|^p`` over populations and time (:func:`~dynode.models.losses.energy_loss`);
   * ``S``: squared deviation after the stimulus from the pre-stimulus baseline;
4. backward, gradient clipping, optimizer and scheduler step.

Long runs: ``checkpoint`` (gradient checkpointing over time segments, memory ~ sqrt(steps))
and ``tbptt`` (truncated BPTT: segments of that many steps, the state and its delayed past
detached between segments, gradients accumulated, one optimizer step per batch).

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the network is wrapped in
``torch.nn.parallel.DistributedDataParallel``; every rank takes its share of each global batch,
so the loss curve matches single-process training on the same global batch.

Everything that makes a run is in :class:`TrainingConfig`; checkpoints hold the weights, the
optimizer and scheduler state, the epoch, the RNG states and the config, and load with
``torch.load(..., weights_only=True)``. Resuming continues the same run: data order and
random streams are seeded per epoch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from dynode.errors import ConfigurationError
from dynode.integrate import integrate

__all__ = ["TrainingConfig", "Trainer", "TrainResult", "train", "evaluate", "load_checkpoint"]


class TrainingConfig(BaseModel):
    """Everything a training run needs besides the model and the data. Times in ms."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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
    dt: float | None = Field(None, gt=0, description="step (ms); default: the model's protocol")
    t_end: float | None = Field(None, gt=0, description="run length (ms); default: the model's protocol")
    solver: Literal["euler", "midpoint", "heun", "rk4"] = "euler"
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
    seed: int = 0
    device: str = "cpu"
    log_every: int = Field(10, ge=1, description="batches between progress-bar updates")

    @model_validator(mode="after")
    def _check(self):
        if self.stability_weight > 0 and (self.stimulus_duration is None or self.stimulus_onset <= 0):
            raise ValueError("stability_weight > 0 needs a pre-stimulus baseline (stimulus_onset > 0) "
                             "and an offset (stimulus_duration) to measure the return to baseline")
        if self.tbptt is not None and self.checkpoint:
            raise ValueError("choose tbptt or checkpoint, not both")
        return self


@dataclass
class TrainResult:
    """Metrics per epoch (the JSON-lines log as dicts) and the final accuracy."""

    history: list[dict] = field(default_factory=list)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


class _Runner(nn.Module):
    """One forward pass = integrate the network under the batch and decode (DDP wraps this)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, stimulus, t0: float, t_end: float, dt: float, solver: str, initial_state, checkpoint):
        sol = integrate(self.network, stimulus, t0=t0, t_end=t_end, dt=dt, solver=solver,
                        initial_state=initial_state, checkpoint=checkpoint)
        return sol


class Trainer:
    """Trains ``network`` (a :class:`dynode.Network` with a readout) under ``config``."""

    def __init__(self, network: nn.Module, config: TrainingConfig, *, log: str | Path | None = None,
                 checkpoint_dir: str | Path | None = None, progress: bool | None = None):
        if getattr(network, "readout", None) is None:
            raise ConfigurationError("the network has no readout; attach one with network.set_readout(...) "
                                     "(the zoo's models have one)")
        self.config = config
        proto = dict(getattr(network, "protocol", {}) or {})
        self.dt = float(config.dt if config.dt is not None else proto.get("dt", 0) or 0)
        self.t_end = float(config.t_end if config.t_end is not None else proto.get("t_end", 0) or 0)
        if not self.dt or not self.t_end:
            raise ConfigurationError("training needs dt and t_end (ms): set them in the TrainingConfig "
                                     "or use a zoo model (network.protocol)")
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.network = network.to(self.device)
        self.dist = _dist()
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1
        if config.batch_size % self.world:
            raise ConfigurationError(f"batch_size {config.batch_size} is not divisible by the "
                                     f"{self.world} processes")
        runner = _Runner(self.network)
        if self.dist:
            from torch.nn.parallel import DistributedDataParallel

            runner = DistributedDataParallel(runner, broadcast_buffers=False)
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
        self.result = TrainResult()
        self.log_path = Path(log) if log is not None else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = sys.stderr.isatty() if progress is None else progress

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

    def _stimulus(self, images: Tensor):
        from dynode.stimuli.base import Pulse

        cfg = self.config
        name = self.network.input_names()[0]
        if cfg.stimulus_onset == 0 and cfg.stimulus_duration is None:
            return {name: images}
        duration = cfg.stimulus_duration if cfg.stimulus_duration is not None else math.inf
        return Pulse(cfg.stimulus_onset, duration, {name: images})

    # -- one batch -------------------------------------------------------------------------
    def _losses(self, sol, labels: Tensor, t_end: float) -> tuple[Tensor, Tensor]:
        from dynode.models.losses import classification_loss, energy_loss, stability_loss

        cfg = self.config
        logits = self.network.decode(sol)
        if logits.dim() == 3:
            loss = classification_loss(logits.float(), labels, sol.ts, onset=cfg.stimulus_onset,
                                       reaction_time=cfg.reaction_time, ramp=cfg.ramp)
            final = logits[-1]
        else:
            loss = nn.functional.cross_entropy(logits.float(), labels)
            final = logits
        if cfg.energy_weight > 0:
            loss = loss + cfg.energy_weight * energy_loss(sol.states, p=cfg.energy_p)
        if cfg.stability_weight > 0:
            loss = loss + cfg.stability_weight * stability_loss(
                sol.states, sol.ts, baseline=(sol.ts[0].item(), cfg.stimulus_onset),
                after=cfg.stimulus_onset + cfg.stimulus_duration)
        return loss, final

    def _warm_up(self, stimulus_shape_batch: int):
        cfg = self.config
        if cfg.idle <= 0:
            return None
        with torch.no_grad():
            zeros = {n: torch.zeros(stimulus_shape_batch, *s, device=self.device)
                     for n, s in self.network.input_shapes().items()}
            return integrate(self.network, zeros, t0=-cfg.idle, t_end=0.0, dt=self.dt, solver=cfg.solver)

    def step(self, images: Tensor, labels: Tensor) -> tuple[float, float]:
        """One optimisation step on a (local) batch; returns (loss, accuracy) of the batch."""
        cfg = self.config
        images, labels = images.to(self.device), labels.to(self.device)
        stim = self._stimulus(images)
        start = self._warm_up(images.shape[0])
        self.optimizer.zero_grad(set_to_none=True)
        amp = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
               else contextlib.nullcontext())
        seg = cfg.tbptt
        n_steps = round(self.t_end / self.dt)
        bounds = [0, n_steps] if seg is None else list(range(0, n_steps, seg)) + [n_steps]
        total, correct, final = 0.0, 0.0, None
        state = start
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            last = i == len(bounds) - 2
            sync = (self.runner.no_sync() if (self.dist and not last) else contextlib.nullcontext())
            with sync:
                with amp:
                    sol = self.runner(stim, a * self.dt, b * self.dt, self.dt, cfg.solver, state, cfg.checkpoint)
                loss, final = self._losses(sol, labels, b * self.dt) if (last or seg is not None) else (None, None)
                if seg is not None and not last:
                    loss = self._segment_loss(sol)  # energy only before the last segment
                if loss is not None:
                    (self.scaler.scale(loss) if self.scaler else loss).backward()
                    total += float(loss.detach())
            if seg is not None:
                state = replace(sol, tail=sol.tail.detach(),
                                final_state={k: v.detach() for k, v in sol.final_state.items()})
        if cfg.grad_clip is not None:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.network.parameters(), cfg.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        correct = (final.detach().argmax(-1) == labels).float().mean().item()
        return total, correct

    def _segment_loss(self, sol):
        from dynode.models.losses import energy_loss

        cfg = self.config
        if cfg.energy_weight > 0:
            return cfg.energy_weight * energy_loss(sol.states, p=cfg.energy_p)
        return None

    # -- epochs ------------------------------------------------------------------------------
    def _local(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return (x[self.rank::self.world], y[self.rank::self.world]) if self.world > 1 else (x, y)

    def fit(self, train_data, val_data=None) -> TrainResult:
        """Train for the remaining epochs. Data: an ``(images, labels)`` pair of tensors, a
        :class:`dynode.stimuli.ImageTask`, or any iterable of ``(images, labels)`` global batches
        (with ``set_epoch(epoch)`` for a reproducible order)."""
        cfg = self.config
        from tqdm.auto import tqdm

        while self.epoch < cfg.epochs:
            epoch = self.epoch
            torch.manual_seed(cfg.seed + 1000 * (epoch + 1))
            self.network.train()
            t_start = time.perf_counter()
            n, loss_sum, acc_sum = 0, 0.0, 0.0
            batches = _batches(train_data, cfg.batch_size, shuffle=True, seed=cfg.seed + epoch, epoch=epoch)
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not self.progress or self.rank,
                       leave=False, total=_len(train_data, cfg.batch_size))
            for i, (x, y) in enumerate(bar):
                xl, yl = self._local(x, y)
                loss, acc = self.step(xl, yl)
                loss, acc = self._reduce(loss, acc)
                n += 1
                loss_sum += loss
                acc_sum += acc
                if i % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{loss_sum / n:.3f}", acc=f"{acc_sum / n:.3f}")
            if self.scheduler is not None:
                self.scheduler.step()
            self.epoch += 1
            row = {"epoch": self.epoch, "train_loss": loss_sum / max(n, 1), "train_acc": acc_sum / max(n, 1),
                   "lr": self.optimizer.param_groups[0]["lr"], "time_s": time.perf_counter() - t_start}
            if val_data is not None:
                row.update({f"val_{k}": v for k, v in self.evaluate(val_data).items()})
            self.result.history.append(row)
            if self.rank == 0:
                if self.log_path is not None:
                    self.log_path.parent.mkdir(parents=True, exist_ok=True)
                    with self.log_path.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
                if self.checkpoint_dir is not None:
                    self.save(self.checkpoint_dir / "last.pt")
                if self.progress:
                    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                          file=sys.stderr)
        return self.result

    def _reduce(self, loss: float, acc: float) -> tuple[float, float]:
        if not self.dist:
            return loss, acc
        t = torch.tensor([loss, acc], dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t)
        return float(t[0]) / self.world, float(t[1]) / self.world

    @torch.no_grad()
    def evaluate(self, data) -> dict:
        """Loss and accuracy of the readout at the end of the run (no gradient)."""
        self.network.eval()
        n, loss_sum, correct = 0, 0.0, 0.0
        for x, y in _batches(data, self.config.batch_size, shuffle=False, seed=0, epoch=0, eval_split=True):
            x, y = x.to(self.device), y.to(self.device)
            start = self._warm_up(x.shape[0])
            sol = integrate(self.network, self._stimulus(x), t0=0.0, t_end=self.t_end, dt=self.dt,
                            solver=self.config.solver, initial_state=start)
            loss, final = self._losses(sol, y, self.t_end)
            loss_sum += float(loss) * len(y)
            correct += float((final.argmax(-1) == y).sum())
            n += len(y)
        self.network.train()
        return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1)}

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Weights, optimizer/scheduler state, epoch, RNG and config (``weights_only`` loadable)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "epoch": self.epoch,
            "history": json.dumps(self.result.history),
            "config": self.config.model_dump_json(),
            "rng": torch.get_rng_state(),
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # never a half-written checkpoint
        return path

    def resume(self, path: str | Path) -> "Trainer":
        """Continue the run saved in ``path`` (same config required)."""
        ckpt = load_checkpoint(path)
        saved = TrainingConfig.model_validate_json(ckpt["config"])
        if saved != self.config:
            diff = {k for k in TrainingConfig.model_fields
                    if getattr(saved, k) != getattr(self.config, k)}
            raise ConfigurationError(f"the checkpoint {path} was made with another config (differs in "
                                     f"{sorted(diff)}); resume with the same config")
        self.network.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch = int(ckpt["epoch"])
        self.result = TrainResult(json.loads(ckpt["history"]))
        torch.set_rng_state(ckpt["rng"])
        return self


def load_checkpoint(path: str | Path) -> dict:
    """Load a dynode checkpoint safely (``weights_only=True``: tensors and plain data only)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def _len(data, batch_size: int) -> int | None:
    if isinstance(data, tuple) or hasattr(data, "x_train"):
        n = len(data[0]) if isinstance(data, tuple) else len(data.x_train)
        return math.ceil(n / batch_size)
    return len(data) if hasattr(data, "__len__") else None


def _batches(data, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
             eval_split: bool = False) -> Iterable[tuple[Tensor, Tensor]]:
    if hasattr(data, "x_train"):  # an ImageTask: normalised train or test split
        x, y = (data.x_test, data.y_test) if eval_split else (data.x_train, data.y_train)
        data = (data.normalize(x), y)
    if isinstance(data, tuple):
        x, y = data
        if len(x) != len(y):
            raise ConfigurationError(f"{len(x)} images but {len(y)} labels")
        g = torch.Generator().manual_seed(seed)
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
    if resume is not None:
        trainer.resume(resume)
    return trainer.fit(train_data, val_data)


def evaluate(network: nn.Module, data, config: TrainingConfig | dict | None = None) -> dict:
    """Loss and accuracy of ``network`` on ``data`` under the run settings of ``config``."""
    cfg = config if isinstance(config, TrainingConfig) else TrainingConfig.model_validate(config or {})
    return Trainer(network, cfg, progress=False).evaluate(data)

"""The trainer (:class:`Trainer`: set-up, the optimisation step, epochs, evaluation) and the
one-call forms :func:`train` and :func:`evaluate`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dynode.archive import check_writable
from dynode.errors import ConfigurationError, DivergenceError
from dynode.guards import magnitudes
from dynode.history import delay_steps
from dynode.integrate import integrate
from dynode.models.stability import spectral_radius
from dynode.network import Network, RunProtocol
from dynode.population import Bounded
from dynode.spec import spec_record
from dynode.train.config import TrainingConfig
from dynode.train.data import as_source, batches, check_data, data_size
from dynode.train.logger import make_logger
from dynode.train.objective import Objective
from dynode.train.runtime import Runner, init_distributed, resolve_device
from dynode.train.state import Checkpointing, TrainResult, canonical_json


def _steps(length: float, dt: float, what: str) -> int:
    n = delay_steps(length, dt)  # length == n dt, to the time tolerance
    if n is None:
        raise ConfigurationError(f"{what} = {length:g} ms is not a whole number of steps dt = {dt:g} ms")
    return n


class Trainer(Objective, Checkpointing):
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
        resolve_device(config.device)  # a device this machine has, before any process group
        self.dist, self._owns_group = init_distributed(config.device)
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1
        device = config.device
        if self.dist and device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', self.rank % max(torch.cuda.device_count(), 1)))}"
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(config.seed)
        self.network = network.to(self.device)
        self._spec = spec_record(network)  # the model as data, for checkpoints (dn.load_model)
        self.readout = readout
        self._plan_losses()
        runner: nn.Module = Runner(self.network)
        if self.dist:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            runner = DistributedDataParallel(runner, device_ids=ids, broadcast_buffers=False)
        self.runner = runner
        params, times = [p for _, p in self._trainable()], self._time_parameters()
        k = len(params) - len(times)  # _trainable puts the learnt taus and delays last
        groups = [{"params": params[:k]}] + ([{"params": params[k:], "lr": config.time_lr or config.lr,
                                              "weight_decay": 0.0}] if times else [])
        make = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[config.optimizer]
        self.optimizer = make(groups, lr=config.lr, weight_decay=config.weight_decay,
                              **({"momentum": config.momentum} if config.optimizer == "sgd" else {}))
        sched = torch.optim.lr_scheduler
        self.scheduler = (sched.StepLR(self.optimizer, config.step_epochs, config.gamma) if config.schedule == "step"
                          else sched.CosineAnnealingLR(self.optimizer, config.epochs) if config.schedule == "cosine"
                          else None)
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
        # TensorBoard (config.logger): the package and its folder checked here, on every rank (none
        # may start alone), before any epoch; rank 0 writes
        logger = make_logger(config.logger, self.checkpoint_dir)
        self.logger = logger if self.rank == 0 else None
        self._batches_seen = 0  # the step axis of the logger's per-step scalars
        self.progress = sys.stderr.isatty() if progress is None else progress
        # off a terminal (a log file, a batch job) no bar is drawn, but each epoch still gets a
        # plain line on stderr; progress=False silences both
        self.epoch_lines = progress is not False

    # -- set-up helpers ------------------------------------------------------------------
    def _amp_dtype(self, amp: str):
        if amp == "fp16" and self.device.type != "cuda":
            raise ConfigurationError("amp='fp16' needs a CUDA device; use 'bf16' (CPU and recent GPUs) or 'off'")
        if amp == "auto":
            amp = "bf16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
        return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def _autocast(self):
        """Mixed precision (``config.amp``) for a forward pass, or nothing."""
        return (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                else contextlib.nullcontext())

    # -- one batch -------------------------------------------------------------------------
    def backward(self, images: Tensor, labels: Tensor, *, scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """Forward and backward on a (local) batch, gradients *accumulated* into ``.grad``
        (multiplied by ``scale``); returns the batch-mean loss and the number of correct
        final predictions (tensors; no host sync)."""
        cfg = self.config
        images, labels = images.to(self.device), labels.to(self.device)
        stim = self._stimulus(images)
        state = self._warm_up(images.shape[0])
        total = torch.zeros((), device=self.device)
        final = None
        segments = list(zip(self._bounds, self._bounds[1:]))
        for i, (a, b) in enumerate(segments):
            last = i == len(segments) - 1
            sync = self.runner.no_sync() if (self.dist and not last) else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    sol = self.runner(stim, t0=a * self.dt, t_end=b * self.dt, dt=self.dt, solver=cfg.solver,
                                      save_at=self._save_at(a, b, i == 0), initial_state=state,
                                      checkpoint=cfg.checkpoint)
                    sol = self._drop_unread(sol)
                    loss, final = self._segment_loss(sol, labels, last)
                if loss is not None:
                    scaled = loss * scale
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                    total = total + loss.detach()
            if not last:  # truncate: the next segment starts from a detached state and delayed past
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
        check_data(images, labels, f"the batch of epoch {self.epoch + 1}",
                   getattr(self.readout, "num_classes", None))
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
        """The trained parameters, in the optimizer's order: the weights, then the learnt time
        constants and delays (their own parameter group: ``time_lr``, no weight decay)."""
        named = [(n, p) for n, p in self.network.named_parameters() if p.requires_grad]
        times = self._time_parameters()
        return [np for np in named if id(np[1]) not in times] + [np for np in named if id(np[1]) in times]

    def _time_parameters(self) -> set[int]:
        """``id`` of the raw parameter of every learnt tau and delay (:class:`dynode.population.Bounded`)."""
        return {id(m.raw) for m in self.network.modules() if isinstance(m, Bounded)}

    def _finite_weights(self) -> Tensor:
        """Whether each trainable parameter (:meth:`_trainable` order) holds only finite
        values, as a boolean tensor on the device (no read)."""
        params = [p for _, p in self._trainable()]
        return torch.isfinite(magnitudes(params)) if params else torch.ones(0, dtype=torch.bool, device=self.device)

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
            if name not in pop.incoming:
                continue
            op = pop.incoming[name]
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
        train_data = as_source(train_data, "train_data")
        val_data = None if val_data is None else as_source(val_data, "val_data")
        from tqdm.auto import tqdm

        n_data = data_size(train_data)
        loader_batch = getattr(train_data, "batch_size", None)
        if n_data is None and loader_batch is not None and loader_batch != cfg.batch_size:
            raise ConfigurationError(f"the data loader makes batches of {loader_batch} but the config says "
                                     f"batch_size={cfg.batch_size}; make them equal")
        if n_data is not None and 0 < n_data % cfg.batch_size < self.world:
            raise ConfigurationError(f"{n_data} samples in batches of {cfg.batch_size} leave a last batch of "
                                     f"{n_data % cfg.batch_size}, fewer than the {self.world} processes; "
                                     "change batch_size")
        if isinstance(train_data, tuple) and len(train_data) == 2:  # all of it, before the first epoch
            check_data(*train_data, "training data", getattr(self.readout, "num_classes", None))
        self._write_log(self.result.history, "w")
        while self.epoch < stop:
            epoch = self.epoch
            torch.manual_seed(cfg.seed + 1000 * (epoch + 1))
            self.network.train()
            t_start = time.perf_counter()
            n, loss_sum, correct_sum = 0, 0.0, 0.0
            total = (math.ceil(n_data / cfg.batch_size) if n_data is not None
                     else len(train_data) if hasattr(train_data, "__len__") else None)
            if total is not None:  # a resumed run's step axis continues where the saved one ended
                self._batches_seen = epoch * total
            bar = tqdm(batches(train_data, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch),
                       desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not self.progress or self.rank != 0,
                       leave=False, total=total)
            for i, (x, y) in enumerate(bar):
                loss, acc = self.step(x, y)
                self._batches_seen += 1
                if self.logger is not None:
                    self.logger.step(self._batches_seen, loss, acc, self.optimizer.param_groups[0]["lr"])
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
            self._write_log([row], "a")
            if self.logger is not None:
                self.logger.epoch(row)
            if self.rank == 0:
                if self.checkpoint_dir is not None:
                    self.save(self.checkpoint_dir / "last.pt")
                if self.epoch_lines:
                    print(f"epoch {self.epoch}/{cfg.epochs}: " + " ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "epoch"),
                        file=sys.stderr, flush=True)
        if self.logger is not None:
            self.logger.close()  # all on disk; a next fit() opens a new event file in the same folder
        return self.result

    def _write_log(self, rows: list[dict], mode: str) -> None:
        """The log's one writer (rank 0): ``mode="w"`` starts it from the run's history (fresh
        run: empty; resumed: its epochs), ``"a"`` appends an epoch's row."""
        if self.rank != 0 or self.log_path is None:
            return
        if mode == "w":  # appending expects the folder the run started in (missing: an error, as before)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open(mode) as fh:
            fh.writelines(json.dumps(row) + "\n" for row in rows)

    @torch.no_grad()
    def evaluate(self, data) -> dict:
        """Loss and accuracy (readout at the end of the run) on ``data`` without gradient;
        an :class:`~dynode.stimuli.ImageTask` is evaluated on its test split. Under DDP the
        ranks share each batch and the result is reduced."""
        data = as_source(data, "data")
        was_training = self.network.training
        self.network.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        n = 0
        for x, y in batches(data, self.config.batch_size, shuffle=False, seed=0, epoch=0, eval_split=True):
            n += len(y)
            x, y = self._local(x, y)
            if len(y) == 0:
                continue
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                sol = integrate(self.network, self._stimulus(x), t0=0.0, t_end=self.t_end, dt=self.dt,
                                solver=self.config.solver, save_at=self._save_at(0, self.n_steps, True),
                                initial_state=self._warm_up(x.shape[0]))
                loss, final = self._segment_loss(self._drop_unread(sol), y, True)
            loss_sum += loss.double() * len(y)
            correct += (final.argmax(-1) == y).sum()
        self.network.train(was_training)
        loss_sum, correct = self._reduce(loss_sum, correct)
        return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1)}

    def close(self) -> None:
        """Close the logger; destroy the process group if this trainer created it (under torchrun)."""
        if self.logger is not None:
            self.logger.close()
        if self._owns_group and self.dist is not None and self.dist.is_initialized():
            self.dist.destroy_process_group()
        self._owns_group = False



def train(network: nn.Module, train_data, config: TrainingConfig | dict | None = None, *, val_data=None,
          log=None, checkpoint_dir=None, resume=None, overwrite: bool = False,
          progress: bool | None = None, logger: str | None = None) -> TrainResult:
    """Train ``network`` on ``train_data`` (see :meth:`Trainer.fit`); returns the metrics per epoch.

    ``train_data``: a :class:`dynode.stimuli.ImageTask` (its normalised train split), an
    ``(images, labels)`` pair (``task.train``) or an iterable of such batches. ``val_data``: data
    evaluated after every epoch (``val_loss``, ``val_acc`` in the metrics, the log and the epoch
    line); default (``None``): the task's test split when ``train_data`` is an ImageTask, else
    none; ``False``: none.

    ``checkpoint_dir``: ``last.pt`` is written there after every epoch. As ``dynode train``
    does, an existing ``checkpoint_dir/last.pt`` is refused before anything runs unless
    ``overwrite=True`` (start over) or ``resume`` is given: ``resume=True`` continues
    ``checkpoint_dir/last.pt``, ``resume=PATH`` continues the run saved in PATH.

    ``logger``: the config's ``logger`` (:mod:`dynode.train.logger`) given here instead:
    ``"tensorboard"`` also writes TensorBoard event files to ``checkpoint_dir/tensorboard/``."""
    cfg = config if isinstance(config, TrainingConfig) else TrainingConfig.model_validate(config or {})
    if logger is not None:
        cfg = TrainingConfig.model_validate({**cfg.model_dump(), "logger": logger})
    resume_path = _resume_path(resume, checkpoint_dir, overwrite)
    if val_data is None and hasattr(train_data, "x_test"):
        val_data = train_data  # an ImageTask: evaluate() reads its test split
    elif val_data is False:
        val_data = None
    trainer = Trainer(network, cfg, log=log, checkpoint_dir=checkpoint_dir, progress=progress)
    try:
        if resume_path is not None:
            trainer.resume(resume_path)
        return trainer.fit(train_data, val_data)
    finally:
        trainer.close()


def _resume_path(resume, checkpoint_dir, overwrite: bool) -> Path | None:
    """What :func:`train` continues (None: a fresh run), after refusing, as the CLI does, to
    replace an earlier training in ``checkpoint_dir`` without ``overwrite`` or ``resume``."""
    if resume is not None and resume is not False and overwrite:
        raise ConfigurationError("overwrite=True starts over and resume continues; give one")
    last = None if checkpoint_dir is None else Path(checkpoint_dir) / "last.pt"
    if resume is True:
        if last is None:
            raise ConfigurationError("resume=True continues checkpoint_dir/last.pt, but no checkpoint_dir was "
                                     "given; pass checkpoint_dir, or resume='path/to/last.pt'")
        if not last.is_file():
            raise ConfigurationError(f"resume=True: no {str(last)!r} to continue; leave resume out to start a "
                                     "new training")
        return last
    if resume is not None and resume is not False:
        if not isinstance(resume, (str, os.PathLike)):
            raise ConfigurationError(f"resume must be True (checkpoint_dir/last.pt) or a checkpoint path, got "
                                     f"{type(resume).__name__} {resume!r}")
        return Path(resume)
    if last is not None and (last.exists() or last.is_symlink()) and not overwrite:
        raise ConfigurationError(f"{str(last)!r} holds an earlier training; pass resume=True to continue it "
                                 "or overwrite=True to start over, or choose another checkpoint_dir")
    return None


def evaluate(network: nn.Module, data, config: TrainingConfig | dict | None = None) -> dict:
    """Loss and accuracy of ``network`` on ``data`` under the run settings of ``config``."""
    cfg = config if isinstance(config, TrainingConfig) else TrainingConfig.model_validate(config or {})
    trainer = Trainer(network, cfg, progress=False)
    try:
        return trainer.evaluate(data)
    finally:
        trainer.close()

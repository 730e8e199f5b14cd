"""The training config (:class:`TrainingConfig`): everything a run needs besides the model and
the data, validated when it is made."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from dynode.solver_config import FIXED_STEP, FrozenConfig


class TrainingConfig(FrozenConfig):
    """Everything a training run needs besides the model and the data. Times in ms."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch (split across ranks under torchrun)")
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    time_lr: float | None = Field(None, gt=0, description="learning rate of the learnt time constants and "
                                  "delays (their raw parameters, without weight decay); None: lr")
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
    logger: Literal["jsonl", "tensorboard"] = Field(
        "jsonl", description="jsonl: the JSON-lines log only; tensorboard: also TensorBoard event files in "
        "<checkpoint_dir>/tensorboard/ (pip install \"dynode[tensorboard]\"; see dynode.train.logger)")

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
        if self.checkpoint is not None and not isinstance(self.checkpoint, bool) and self.checkpoint < 1:
            raise ValueError(f"checkpoint must be None, True/False or a segment length >= 1 (steps), "
                             f"got {self.checkpoint}")
        return self

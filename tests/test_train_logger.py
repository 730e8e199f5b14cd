"""Experiment tracking (issue 22, item 8): ``logger="tensorboard"`` writes the training's
scalars as TensorBoard event files to ``<checkpoint_dir>/tensorboard/`` besides the JSON-lines
log; without the package it is one clear error before anything trains."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from dynode.errors import ConfigurationError
from dynode.models import dyrcnn
from dynode.stimuli import generated_task
from dynode.train import Trainer, TrainingConfig, train
from dynode.train import logger as logger_mod

CFG = TrainingConfig(epochs=1, batch_size=8, lr=1e-2, seed=0)


@pytest.fixture(scope="module")
def task():
    return generated_task(16, 8, size=8, classes=("vertical", "horizontal"), seed=1)


def _net(task):
    torch.manual_seed(0)
    return dyrcnn(depth=2, width=0.25, input_shape=task.image_shape, num_classes=task.num_classes, steps=4)


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_files_hold_the_logged_losses(task, tmp_path):
    """One epoch of 2 batches: TensorBoard's own reader gives back the two batch losses, the
    learning rate and the epoch's row (train and validation), equal to the JSON-lines log; the
    second epoch, resumed from the checkpoint by a new trainer, continues the step axis (steps
    3, 4) in the same folder."""
    pytest.importorskip("tensorboard")
    two = CFG.model_copy(update={"epochs": 2, "logger": "tensorboard"})
    trainer = Trainer(_net(task), two, log=tmp_path / "train.jsonl", checkpoint_dir=tmp_path, progress=False)
    result = trainer.fit(task, task, until=1)
    row = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])
    assert row == pytest.approx(result.final)
    got = _scalars(tmp_path / "tensorboard")
    assert [s for s, _ in got["step/loss"]] == [1, 2] and [s for s, _ in got["step/lr"]] == [1, 2]
    losses = [v for _, v in got["step/loss"]]
    assert sum(losses) / 2 == pytest.approx(row["train_loss"], rel=1e-6)  # two batches of 8
    assert [v for _, v in got["step/lr"]] == pytest.approx([1e-2, 1e-2])
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert got[f"epoch/{key}"] == [(1, pytest.approx(row[key], rel=1e-6))], key
    again = Trainer(_net(task), two, log=tmp_path / "train.jsonl", checkpoint_dir=tmp_path, progress=False)
    again.resume(tmp_path / "last.pt").fit(task, task)
    got = _scalars(tmp_path / "tensorboard")
    assert [s for s, _ in got["step/loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in got["epoch/val_acc"]] == [1, 2]


def test_a_checkpoint_resumes_under_another_logger(task, tmp_path):
    """The logger is where metrics go, not part of the run: a jsonl run's checkpoint resumes
    with tensorboard (and back); another training setting is still refused."""
    Trainer(_net(task), CFG, progress=False).save(tmp_path / "last.pt")
    tb = CFG.model_copy(update={"logger": "tensorboard"})
    if importlib.util.find_spec("tensorboard") is not None:
        assert Trainer(_net(task), tb, checkpoint_dir=tmp_path, progress=False).resume(tmp_path / "last.pt").epoch == 0
    with pytest.raises(ConfigurationError, match=r"differs in \['lr'\]"):
        Trainer(_net(task), CFG.model_copy(update={"lr": 0.5}), progress=False).resume(tmp_path / "last.pt")


def test_without_tensorboard_the_run_is_refused_before_it_trains(task, tmp_path, monkeypatch):
    """The package missing: one ConfigurationError naming the extra, nothing written."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigurationError, match=r'pip install "dynode\[tensorboard\]"'):
        train(_net(task), task, CFG, checkpoint_dir=tmp_path / "ck", log=tmp_path / "train.jsonl",
              progress=False, logger="tensorboard")
    assert not (tmp_path / "ck").exists() and not (tmp_path / "train.jsonl").exists()
    assert logger_mod.INSTALL_HINT.startswith('logger="tensorboard" needs the tensorboard package')


def test_tensorboard_needs_a_folder_and_a_known_name(task):
    with pytest.raises(ConfigurationError, match="give the training a checkpoint_dir"):
        if importlib.util.find_spec("tensorboard") is None:
            pytest.skip("tensorboard not installed: the missing package is reported first")
        Trainer(_net(task), CFG.model_copy(update={"logger": "tensorboard"}))
    with pytest.raises(ValueError, match="jsonl"):
        TrainingConfig(logger="wandb")
    with pytest.raises(ValueError, match="jsonl"):
        train(_net(task), task, CFG, logger="wandb", progress=False)

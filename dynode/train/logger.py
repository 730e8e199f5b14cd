"""Experiment tracking: where a training's metrics go besides its JSON-lines log.

``TrainingConfig(logger="jsonl")`` (the default) keeps the JSON-lines log only (one row per
epoch, the ``log=`` file; ``dynode train`` and sweeps write ``train.jsonl``).
``logger="tensorboard"`` writes TensorBoard event files to ``<checkpoint_dir>/tensorboard/``
as well (the JSON-lines log is unchanged): per optimizer step ``step/loss``, ``step/acc`` (the
batch's) and ``step/lr``, against the number of batches trained (the x axis continues across a
resume); per epoch every number of the epoch's row (``epoch/train_loss``, ``epoch/train_acc``,
``epoch/lr``, ``epoch/time_s``, ``epoch/val_loss``, ``epoch/val_acc`` when validated) against
the epoch. Open them with ``tensorboard --logdir <checkpoint_dir>``. TensorBoard is an optional
extra: ``pip install "dynode[tensorboard]"``; a run that asks for it without the package is a
:class:`~dynode.errors.ConfigurationError` before anything trains. Only rank 0 writes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from dynode.errors import ConfigurationError

LOGGERS = ("jsonl", "tensorboard")
INSTALL_HINT = ('logger="tensorboard" needs the tensorboard package: pip install "dynode[tensorboard]" '
                '(or pip install tensorboard), or set training.logger to "jsonl" (the JSON-lines log only)')


class TensorBoardLogger:
    """Scalars into ``<folder>`` (a :class:`torch.utils.tensorboard.SummaryWriter`, opened at
    the first scalar, flushed after every epoch)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._writer = None

    def _w(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.folder))
        return self._writer

    def step(self, step: int, loss: float, acc: float, lr: float) -> None:
        """One optimizer step's batch loss and accuracy and the learning rate."""
        w = self._w()
        for key, value in (("loss", loss), ("acc", acc), ("lr", lr)):
            w.add_scalar(f"step/{key}", value, step)

    def epoch(self, row: dict) -> None:
        """Every number of an epoch's row (:attr:`TrainResult.history`), at its epoch."""
        w = self._w()
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                w.add_scalar(f"epoch/{key}", value, row["epoch"])
        w.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def make_logger(kind: str, checkpoint_dir: Path | None) -> TensorBoardLogger | None:
    """The logger a :class:`~dynode.train.TrainingConfig` asks for (``None``: JSON lines only),
    checked before training starts: the package is installed and there is a folder for it."""
    if kind == "jsonl":
        return None
    if kind != "tensorboard":  # TrainingConfig's Literal already refuses this; a direct caller may not
        raise ConfigurationError(f"unknown logger {kind!r}; known: {', '.join(LOGGERS)}")
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigurationError(INSTALL_HINT)
    if checkpoint_dir is None:
        raise ConfigurationError('logger="tensorboard" writes to <checkpoint_dir>/tensorboard/: give the '
                                 "training a checkpoint_dir (dynode train: its output folder)")
    return TensorBoardLogger(Path(checkpoint_dir) / "tensorboard")

"""Training from Python as a new user writes it (issue 22, item 3): ``task.train`` pairs, the
task's test split as validation by default, clear errors for data that is not data, and
``checkpoint_dir`` refusing to replace an earlier training as ``dynode train`` does."""

from __future__ import annotations

import pytest
import torch

import dynode as dn
from dynode.errors import ConfigurationError
from dynode.models import dyrcnn
from dynode.stimuli import generated_task
from dynode.train import TrainingConfig, evaluate, load_checkpoint, train

CFG = TrainingConfig(epochs=1, batch_size=16, lr=1e-2, seed=0)


@pytest.fixture(scope="module")
def task():
    return generated_task(32, 16, size=8, classes=("vertical", "horizontal"), seed=1)


def _net(task, seed=0):
    torch.manual_seed(seed)
    return dyrcnn(depth=2, width=0.25, input_shape=task.image_shape, num_classes=task.num_classes, steps=4)


def _metrics(result):
    return [{k: v for k, v in row.items() if k != "time_s"} for row in result.history]


def test_task_train_and_test_are_the_normalised_pairs(task):
    x, y = task.train
    assert torch.equal(x, task.normalize(task.x_train)) and torch.equal(y, task.y_train)
    xt, yt = task.test
    assert torch.equal(xt, task.normalize(task.x_test)) and torch.equal(yt, task.y_test)
    # normalised with the training statistics: the training split has mean 0, std 1 per channel
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-3


def test_task_train_trains_like_the_task(task):
    """``train(net, task.train, val_data=task.test)`` is the same run as ``train(net, task)``."""
    a = train(_net(task), task.train, CFG, val_data=task.test, progress=False)
    b = train(_net(task), task, CFG, progress=False)
    assert _metrics(a) == _metrics(b)
    c = train(_net(task), list(task.train), CFG, val_data=list(task.test), progress=False)
    assert _metrics(c) == _metrics(a)


def test_a_task_is_validated_on_its_test_split_by_default(task, capsys):
    result = train(_net(task), task, CFG)  # progress None: off a terminal, one line per epoch
    row = result.final
    assert {"val_loss", "val_acc"} <= set(row)
    assert "val_acc=" in capsys.readouterr().err
    # the value is the test split's accuracy of the trained network
    net = _net(task)
    result = train(net, task, CFG, progress=False)
    assert result.final["val_acc"] == pytest.approx(evaluate(net, task, CFG)["acc"])
    # val_data=False: no validation; a pair is not validated unless asked
    assert "val_acc" not in train(_net(task), task, CFG, val_data=False, progress=False).final
    assert "val_acc" not in train(_net(task), task.train, CFG, progress=False).final


@pytest.mark.parametrize("data, says", [
    (lambda t: t.x_train, "one tensor of shape"),
    (lambda t: (t.x_train, t.y_train, t.classes), "tuple of 3 items"),
    (lambda t: t.dataset("train"), "DataLoader(dataset"),
    (lambda t: {"x": t.x_train, "y": t.y_train}, "dict"),
    (lambda t: 3, "not data"),
])
def test_data_that_is_not_data_is_a_clear_error(task, data, says):
    with pytest.raises(ConfigurationError, match="train_data") as err:
        train(_net(task), data(task), CFG, progress=False)
    assert says in str(err.value) and "task.train" in str(err.value)
    with pytest.raises(ConfigurationError, match="val_data"):
        train(_net(task), task, CFG, val_data=data(task), progress=False)


def test_checkpoint_dir_refuses_an_earlier_training_like_the_cli(task, tmp_path):
    first = train(_net(task), task, CFG, checkpoint_dir=tmp_path, progress=False)
    last = tmp_path / "last.pt"
    saved = last.read_bytes()
    with pytest.raises(ConfigurationError, match="holds an earlier training") as err:
        train(_net(task, seed=1), task, CFG, checkpoint_dir=tmp_path, progress=False)
    assert "resume=True" in str(err.value) and "overwrite=True" in str(err.value)
    assert last.read_bytes() == saved  # refused before anything ran
    with pytest.raises(ConfigurationError, match="give one"):
        train(_net(task), task, CFG, checkpoint_dir=tmp_path, resume=True, overwrite=True, progress=False)
    # overwrite=True starts over: the new run's weights replace the old ones
    net = _net(task, seed=1)
    second = train(net, task, CFG, checkpoint_dir=tmp_path, overwrite=True, progress=False)
    assert last.read_bytes() != saved
    w = "readout.linear.weight"
    assert torch.equal(load_checkpoint(last)["model"][w], net.state_dict()[w])
    # resume=True continues checkpoint_dir/last.pt (a finished run: its weights and metrics, nothing retrained)
    again = _net(task, seed=2)
    resumed = train(again, task, CFG, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert torch.equal(again.state_dict()["readout.linear.weight"], net.state_dict()["readout.linear.weight"])
    assert _metrics(resumed) == _metrics(second) != _metrics(first)


def test_resume_true_needs_a_checkpoint(task, tmp_path):
    with pytest.raises(ConfigurationError, match="no checkpoint_dir"):
        train(_net(task), task, CFG, resume=True, progress=False)
    with pytest.raises(ConfigurationError, match="no .*last.pt.* to continue"):
        train(_net(task), task, CFG, checkpoint_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ConfigurationError, match="resume must be"):
        train(_net(task), task, CFG, checkpoint_dir=tmp_path, resume=1, progress=False)
    assert not (tmp_path / "last.pt").exists()


def test_dn_train_train_is_the_same_function():
    assert dn.train.train is train


def test_the_readme_block_reports_the_accuracy_it_states(tmp_path, monkeypatch, capsys):
    """The README's "Train from Python" block prints a validation accuracy; the number its comment
    states is the one it prints (a 2-class task: well above chance after 3 epochs)."""
    import re

    from test_docs import ROOT, extract

    [block] = [b for b in extract(ROOT / "README.md") if b.lang == "python" and "checkpoint_dir=\"my-run\"" in b.code]
    stated = float(re.search(r"validation accuracy.*# ([01]\.\d\d) \(chance", block.code).group(1))
    monkeypatch.chdir(tmp_path)
    exec(compile(block.code, block.id, "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    printed = float(re.search(r"validation accuracy ([01]\.\d\d)", out).group(1))
    assert printed == pytest.approx(stated, abs=0.05) and printed > 0.75  # measured 0.90 (43 of 48)
    assert "holds an earlier training" in out and (tmp_path / "my-run" / "last.pt").is_file()

"""Readout rows (issue 26, item 4): the readouts and the loss decode responses, never the
initial state. ``Classifier(dyrcnn_published())`` returned 21 rows for its 20 steps, the first
the zero state at t0 (the bias alone, the same for every image); the toolbox's DyRCNNx4
returns its 20 steps. Now ``at="every"`` gives one row per step, ``at="mean"`` never averages
the state at t0, the reaction-window weights leave out the state at the stimulus onset (the
pre-stimulus state), and the trainer reads the same rows as the Classifier.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import dynode as dn
from dynode.errors import ConfigurationError
from dynode.models import Classifier, dyrcnn, dyrcnn_published
from dynode.models.losses import classification_loss, time_weights
from dynode.stimuli import generated_task
from dynode.train import Trainer, TrainingConfig


def test_every_decodes_one_row_per_step_as_the_toolbox():
    torch.manual_seed(0)
    net = dyrcnn_published(num_classes=100, input_shape=(3, 32, 32))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = Classifier(net)(x)
        sol = dn.integrate(net, x, t_end=net.protocol.t_end, dt=net.protocol.dt)
    assert net.protocol.steps == 20 and logits.shape == (20, 2, 100)
    # row k is the readout of the state after step k + 1 (t = (k + 1) dt), not of t0
    ro = net.readout
    torch.testing.assert_close(logits, ro.linear(ro.features(sol.states["IT"][1:])))
    # no row is the bias-only zero state (the row that was dropped)
    bias = ro.linear.bias.expand(2, 100)
    assert not any(torch.allclose(row, bias) for row in logits)


def test_mean_never_averages_the_initial_state():
    torch.manual_seed(0)
    net = dyrcnn(2, num_classes=5, width=0.25, steps=4, readout_at="mean", readout_window=(0.0, 8.0))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        got = Classifier(net)(x)
        sol = dn.integrate(net, x, t_end=8.0, dt=2.0)
    ro = net.readout
    assert sol.ts.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    torch.testing.assert_close(got, ro.linear(ro.features(sol.states["IT"][1:].mean(0))))


def test_reaction_window_leaves_out_the_state_at_the_onset():
    ts = [0.0, 2.0, 4.0, 6.0]
    assert time_weights(ts).tolist() == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3])  # onset 0: t0 out
    assert time_weights(ts, onset=2.0).tolist() == pytest.approx([0, 0, 1 / 2, 1 / 2])
    assert time_weights(ts, onset=2.0, ramp=True).tolist() == pytest.approx([0, 0, 1 / 3, 2 / 3])
    # a positive reaction time starts the window at onset + reaction_time, inclusive (as before)
    assert time_weights(ts, onset=0.0, reaction_time=2.0).tolist() == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3])
    with pytest.raises(ConfigurationError, match=r"no time point lies in the loss window \(6, end\] ms"):
        time_weights(ts, onset=6.0)
    logits, y = torch.randn(4, 3, 5), torch.tensor([0, 4, 2])
    ce = [F.cross_entropy(logits[i], y) for i in range(4)]
    got = classification_loss(logits, y, ts)
    torch.testing.assert_close(got, (ce[1] + ce[2] + ce[3]) / 3)


@pytest.mark.parametrize("energy", [0.0, 0.1])
def test_trainer_reads_the_classifier_rows(energy):
    """The trainer's loss for a readout at every step is the mean cross-entropy of the
    Classifier's rows (steps 1..n), with and without the energy term (which saves t0 too)."""
    task = generated_task(16, 8, size=16, seed=3)
    torch.manual_seed(0)
    net = dyrcnn(depth=2, width=0.25, input_shape=task.image_shape, num_classes=task.num_classes,
                 steps=5, readout_at="every")
    x, y = task.normalize(task.x_train[:8]), task.y_train[:8]
    loss, correct = Trainer(net, TrainingConfig(energy_weight=energy, energy_p=2),
                            progress=False).backward(x, y)
    with torch.no_grad():
        logits = Classifier(net)(x)
        sol = dn.integrate(net, x, t_end=10.0, dt=2.0)
    assert logits.shape[0] == 5
    expected = sum(F.cross_entropy(row, y) for row in logits) / 5
    if energy:
        expected = expected + energy * sum(s.square().mean() for s in sol.states.values())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert correct.item() == (logits[-1].argmax(-1) == y).sum().item()


def test_a_window_without_a_step_after_t0_is_refused():
    task = generated_task(16, 8, size=16, seed=3)
    net = dyrcnn(depth=2, width=0.25, input_shape=task.image_shape, num_classes=task.num_classes,
                 steps=5, readout_at="every", readout_window=(0.0, 1.0))
    with pytest.raises(ConfigurationError, match=r"holds no step of the run after its start"):
        Trainer(net, TrainingConfig(), progress=False)
    with pytest.raises(ConfigurationError, match=r"window \[0, 1\] ms holds no saved time"):
        Classifier(net)(task.normalize(task.x_train[:2]))

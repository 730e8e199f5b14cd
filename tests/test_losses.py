"""Losses over trajectories: time-window classification, energy, stability."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dynode as dn
from dynode.models import losses, zoo


def test_time_weights_window_and_ramp():
    ts = torch.arange(0.0, 12.0, 2.0)  # 0 2 4 6 8 10
    w = losses.time_weights(ts, onset=2.0, reaction_time=3.0)  # t >= 5: 6 8 10
    assert w.tolist() == pytest.approx([0, 0, 0, 1 / 3, 1 / 3, 1 / 3])
    w = losses.time_weights(ts, onset=2.0, reaction_time=2.0, until=8.0, ramp=True)  # 4 6 8
    assert w.tolist() == pytest.approx([0, 0, 1 / 6, 2 / 6, 3 / 6, 0])
    with pytest.raises(dn.ConfigurationError, match="no time point lies in the loss window"):
        losses.time_weights(ts, onset=20.0)


def test_classification_loss_is_the_weighted_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(5, 3, 4)
    y = torch.tensor([0, 3, 1])
    ts = [0.0, 1.0, 2.0, 3.0, 4.0]
    got = losses.classification_loss(logits, y, ts, onset=1.0, reaction_time=1.0, ramp=True)
    ce = [F.cross_entropy(logits[i], y) for i in range(5)]
    ref = (1 * ce[2] + 2 * ce[3] + 3 * ce[4]) / 6
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(losses.classification_loss(logits[-1], y), F.cross_entropy(logits[-1], y))
    with pytest.raises(dn.ConfigurationError, match="needs ts"):
        losses.classification_loss(logits, y)
    with pytest.raises(dn.ShapeError, match="5 times given for"):
        losses.classification_loss(logits[:4], y, ts)


def test_energy_loss_values():
    r = {"A": torch.tensor([[1.0, -3.0]]), "B": torch.tensor([[2.0, 2.0, 2.0, 2.0]])}
    assert float(losses.energy_loss(r)) == pytest.approx(2.0 + 2.0)
    assert float(losses.energy_loss(r, p=2)) == pytest.approx(5.0 + 4.0)
    assert float(losses.energy_loss(r, weights={"B": 0.5})) == pytest.approx(1.0)
    with pytest.raises(dn.ConfigurationError, match="p must be 1"):
        losses.energy_loss(r, p=3)
    with pytest.raises(dn.ConfigurationError, match="name none of the populations"):
        losses.energy_loss(r, weights={"C": 1.0})


def test_energy_loss_on_a_trajectory_is_nonzero_with_gradients():
    torch.manual_seed(0)
    net = zoo.dyrcnn(2, num_classes=3, width=0.25)
    sol = dn.integrate(net, torch.rand(2, 3, 32, 32), t_end=20.0, dt=2.0)
    loss = 2e-4 * losses.energy_loss(sol.states, p=1)
    assert float(loss.detach()) > 0
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(grads) >= 4  # input convs and recurrences of both areas
    assert all(torch.isfinite(g).all() for g in grads)


def test_stability_loss_measures_deviation_from_baseline():
    ts = torch.arange(6.0)
    base = torch.ones(6, 2, 3)
    assert float(losses.stability_loss({"A": base}, ts, baseline=(0, 1), after=4)) == 0.0
    r = base.clone()
    r[4:] += 2.0  # after removal the activity sits 2 above the baseline
    got = losses.stability_loss({"A": r, "B": base}, ts, baseline=(0.0, 1.0), after=4.0)
    assert float(got) == pytest.approx(4.0)
    with pytest.raises(dn.ConfigurationError, match="holds no saved time"):
        losses.stability_loss({"A": r}, ts, baseline=(10, 11), after=4)

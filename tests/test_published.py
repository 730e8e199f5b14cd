"""The published four-area DyRCNN: the toolbox's state shapes and parameter count."""

import pytest
import torch

import dynode as dn
from dynode.errors import ConfigurationError
from dynode.models import dyrcnn_published


def test_state_shapes_and_parameter_count_match_the_toolbox():
    net = dyrcnn_published(num_classes=100, input_shape=(3, 32, 32))
    assert {a: net.shape_of(a) for a in ("V1", "V2", "V4", "IT")} == {
        "V1": (36, 32, 32), "V2": (64, 16, 16), "V4": (121, 8, 8), "IT": (256, 4, 4)}
    weights = sum(p.numel() for p in net.parameters())
    assert weights == 1_188_080
    # the toolbox also registers one tau parameter per area (trained with train_tau)
    learnt = dyrcnn_published(num_classes=100, input_shape=(3, 32, 32), train_tau=True)
    assert sum(p.numel() for p in learnt.parameters()) == 1_188_084
    assert learnt.tau_bounds() == {a: (2.5, 10.0) for a in ("V1", "V2", "V4", "IT")}
    # every convolution carries a bias, the recurrence included
    for conn in net.connections:
        convs = [m for m in net.populations[conn.dst].incoming[conn.src].modules()
                 if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(c.bias is not None for c in convs), conn


def test_skip_adapter_resizes_then_projects_with_bias_equal_to_project_then_resize():
    torch.manual_seed(0)
    net = dyrcnn_published(num_classes=10)
    adapter = net.populations["V4"].incoming["V1"]
    x = torch.randn(2, 36, 32, 32, dtype=torch.float64)
    adapter = adapter.double()
    full_res = adapter.project(x)                       # the toolbox's order
    other = adapter.resize(full_res)
    assert torch.allclose(adapter(x), other, atol=1e-12)


def test_readout_classifies_every_step():
    net = dyrcnn_published(num_classes=7, steps=4)
    sol = dn.integrate(net, torch.rand(2, 3, 32, 32), t_end=net.protocol.t_end, dt=net.protocol.dt)
    assert net.decode(sol).shape == (5, 2, 7)


def test_bad_input():
    with pytest.raises(ConfigurationError, match="n and k"):
        dyrcnn_published(phi="relu", n=2.0)
    with pytest.raises(ConfigurationError, match="8 x 8"):
        dyrcnn_published(input_shape=(3, 4, 4))

"""Solution.to_xarray (issue 22, item 7): a labelled Dataset of the saved trajectory."""

import dataclasses

import pytest
import torch
from torch import nn

import dynode as dn
from dynode.errors import ConfigurationError


def test_to_xarray_labels_a_trajectory_without_autograd_history():
    torch.manual_seed(0)
    net = dn.Network()
    net.add_input("image", (1, 8, 8))
    net.add_population("V1", (4, 4, 4), tau=5.0)
    net.add_population("IT", (6,), tau=10.0, learn_tau=True)
    net.connect("image", "V1", nn.Conv2d(1, 4, 3, stride=2, padding=1))
    net.connect("V1", "IT", nn.Sequential(nn.Flatten(), nn.Linear(64, 6)), delay=2.0)
    sol = dn.integrate(net, torch.rand(3, 1, 8, 8), t_end=10.0, dt=1.0)
    assert sol.states["IT"].requires_grad  # the trajectory carries the graph (training)
    ds = sol.to_xarray()
    assert ds["V1"].dims == ("time", "sample", "V1_channel", "V1_y", "V1_x")
    assert ds["IT"].dims == ("time", "sample", "IT_channel")
    assert ds["V1"].shape == (11, 3, 4, 4, 4)
    assert ds.time.values.tolist() == [float(t) for t in range(11)] and ds.time.attrs["units"] == "ms"
    assert (ds["IT"].values == sol.states["IT"].detach().numpy()).all()
    assert ds.attrs["solver_status"] == "SUCCESS"
    float(ds["V1"].sel(time=5.0).mean())  # plain xarray from here on: no .detach() needed


def test_to_xarray_of_a_run_without_saved_states_is_refused():
    net = dn.Network()
    net.add_input("x", (2,))
    net.add_population("a", (2,), tau=5.0)
    net.connect("x", "a")
    sol = dn.integrate(net, torch.ones(1, 2), t_end=2.0, dt=1.0)
    with pytest.raises(ConfigurationError, match="no saved states"):
        dataclasses.replace(sol, states={}).to_xarray()  # as a streamed run's Solution

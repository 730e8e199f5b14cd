"""Parts that landed separately, working together."""

import numpy as np
import torch

import dynode as dn
from dynode.stimuli import Pulse


def test_adaptive_solver_streams_to_an_archive_equal_to_integrate(tmp_path):
    torch.manual_seed(0)
    net = dn.models.dyrcnn(depth=2, input_shape=(1, 8, 8), num_classes=3, width=0.25, phi="relu")
    stim = Pulse(2.0, 10.0, {"image": torch.rand(2, 1, 8, 8)})
    solver = dn.solvers.Dopri5(rtol=1e-6, atol=1e-8)
    res = dn.simulate(net, stim, t_end=30.0, solver=solver, record=dn.Record(every=1.0), store=tmp_path / "a.zarr")
    with torch.no_grad():
        ref = dn.integrate(net, stim, t_end=30.0, solver=solver, save_at=1.0)
    assert res.status == "complete" and res.stats.rejected >= 0 and res.stats.accepted > 0
    tree = dn.open_archive(tmp_path / "a.zarr")
    assert np.array_equal(tree["time"].values, ref.ts.numpy())
    for name in ("V1", "IT"):
        np.testing.assert_array_equal(tree[name]["rate"].values, ref.states[name].numpy())


def test_zoo_model_under_a_protocol_continues_exactly_after_an_idle_period():
    """Idle warm-up without input, then the protocol, equals one run with the blank first."""
    torch.manual_seed(0)
    net = dn.models.dyrcnn(depth=2, input_shape=(1, 8, 8), num_classes=3, width=0.25, phi="relu")
    img = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        whole = dn.integrate(net, Pulse(20.0, 10.0, {"image": img}), t_end=40.0, dt=1.0)
        idle = dn.integrate(net, {"image": torch.zeros_like(img)}, t_end=20.0, dt=1.0)
        rest = dn.integrate(net, Pulse(20.0, 10.0, {"image": img}), t0=20.0, t_end=40.0, dt=1.0,
                            initial_state=idle)
    for name in whole.states:
        torch.testing.assert_close(rest.states[name], whole.states[name][20:], rtol=0, atol=1e-6)

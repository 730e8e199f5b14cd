"""Model components: adapters and the connect rule, pipelines, skip_initial, readouts,
stability report and summary, retina, activations, speed options."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynode as dn
from dynode.models import (Adapter, Classifier, Readout, Retina, adapter, prepare_for_speed, recurrence,
                           spectral_radius, stability_report, zoo)
from dynode.activations import get_activation


# -- adapters --------------------------------------------------------------------------
@pytest.mark.parametrize("src, dst, mode", [
    ((8, 16, 16), (4, 4, 4), "area"), ((8, 4, 4), (16, 16, 16), "bilinear"),
    ((8, 9, 9), (8, 4, 4), "area"), ((3, 5, 7), (6, 5, 7), None)])
def test_adapter_shapes(src, dst, mode):
    a = adapter(src, dst)
    assert a(torch.randn(2, *src)).shape == (2, *dst)
    assert (a.resize.mode if a.resize is not None else None) == mode
    assert (a.project is not None) == (src[0] != dst[0])


def test_adapter_resizes_first_then_projects():
    a = adapter((8, 16, 16), (4, 4, 4))
    seen = []
    a.project.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    x = torch.randn(2, 8, 16, 16)
    y = a(x)
    assert seen == [(2, 8, 4, 4)]  # the projection runs at the small resolution
    ref = F.conv2d(F.interpolate(x, size=(4, 4), mode="area"), a.project.weight)
    torch.testing.assert_close(y, ref)
    up = adapter((8, 4, 4), (4, 8, 8))
    x = torch.randn(1, 8, 4, 4)
    ref = F.conv2d(F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False), up.project.weight)
    torch.testing.assert_close(up(x), ref)


def test_adapter_errors():
    with pytest.raises(dn.ShapeError, match="one side shrinks and the other grows"):
        adapter((4, 8, 2), (4, 4, 4))
    with pytest.raises(dn.ShapeError, match="no automatic adapter"):
        adapter((4, 8, 8), (16,))


def _two_areas():
    net = dn.Network()
    net.add_input("x", shape=(3, 8, 8))
    net.add_population("A", shape=(4, 8, 8), tau=5.0)
    net.add_population("B", shape=(6, 4, 4), tau=5.0)
    net.connect("x", "A", nn.Conv2d(3, 4, 3, padding=1))
    return net


def test_connect_builds_adapters_between_different_shapes():
    net = _two_areas()
    net.connect("A", "B", delay=1.0)  # skip / feed-forward: area average down, project 4 -> 6
    net.connect("B", "A", delay=2.0)  # feedback: bilinear up, project 6 -> 4
    net.connect("A", "A")  # same shape: identity
    ops = {c.label: c.op for c in net.connections}
    assert isinstance(ops["A -> B"], Adapter) and ops["A -> B"].resize.mode == "area"
    assert isinstance(ops["B -> A"], Adapter) and ops["B -> A"].resize.mode == "bilinear"
    assert isinstance(ops["A -> A"], nn.Identity)
    sol = dn.integrate(net, torch.randn(2, 3, 8, 8), t_end=6.0, dt=1.0)
    assert sol.states["B"].shape == (7, 2, 6, 4, 4)
    keys = list(net.state_dict())
    assert "populations.B.incoming.A.project.weight" in keys
    assert len(keys) == len(set(keys))


def test_connect_with_a_wrong_explicit_op_is_an_error():
    net = _two_areas()
    with pytest.raises(dn.ShapeError, match=r"maps \(4, 8, 8\) to \(6, 8, 8\), but 'B' has shape "
                                            r"\(6, 4, 4\).*op=None for the automatic adapter"):
        net.connect("A", "B", nn.Conv2d(4, 6, 1))


# -- pipelines -------------------------------------------------------------------------
def test_pipeline_order_is_respected():
    torch.manual_seed(0)
    norm, pool = nn.GroupNorm(2, 4), nn.MaxPool2d(2)
    net = dn.Network()
    net.add_input("x", shape=(3, 8, 8))
    net.add_population("A", shape=(4, 4, 4), tau=1.0, bias=True, pipeline=["sum", norm, "tanh", pool])
    conv = nn.Conv2d(3, 4, 3, padding=1)
    net.connect("x", "A", conv)
    with torch.no_grad():
        net.populations["A"].bias.fill_(0.3)
        x = torch.randn(2, 3, 8, 8)
        sol = dn.integrate(net, x, t_end=1.0, dt=1.0)  # dt == tau: r_1 = Phi(u_0)
        ref = pool(torch.tanh(norm(conv(x) + 0.3)))
    torch.testing.assert_close(sol.states["A"][1], ref)


def test_pipeline_with_pooling_checks_shapes_and_adapts_inputs():
    net = dn.Network()
    net.add_input("x", shape=(3, 8, 8))
    net.add_population("A", shape=(4, 4, 4), tau=1.0, pipeline=["relu", nn.MaxPool2d(2)])
    net.connect("x", "A", nn.Conv2d(3, 4, 3, padding=1))  # u: (4, 8, 8), pooled to (4, 4, 4)
    net.connect("A", "A", delay=1.0)  # op=None: adapter from (4, 4, 4) to the u shape (4, 8, 8)
    assert net.populations["A"].incoming["A"].resize.mode == "bilinear"
    bad = dn.Network()
    bad.add_input("x", shape=(3, 8, 8))
    bad.add_population("A", shape=(4, 8, 8), tau=1.0, pipeline=["relu", nn.MaxPool2d(2)])
    with pytest.raises(dn.ShapeError, match="pipeline maps to"):
        bad.connect("x", "A", nn.Conv2d(3, 4, 3, padding=1))


def test_pipeline_errors():
    net = dn.Network()
    with pytest.raises(dn.ConfigurationError, match="either pipeline"):
        net.add_population("A", shape=(4,), tau=1.0, phi="tanh", pipeline=["relu"])
    with pytest.raises(dn.ConfigurationError, match="must come first"):
        net.add_population("A", shape=(4,), tau=1.0, pipeline=["relu", "sum"])
    with pytest.raises(dn.ConfigurationError, match="unknown activation 'rleu'"):
        net.add_population("A", shape=(4,), tau=1.0, pipeline=["sum", "rleu"])


# -- skip_initial ----------------------------------------------------------------------
@pytest.mark.parametrize("delay", [0.0, 2.0])
def test_skip_initial_term_is_absent_while_the_source_is_initial(delay):
    net = dn.Network()
    net.add_input("x", shape=(1,))
    net.add_population("A", shape=(1,), tau=1.0, phi="identity")
    net.add_population("B", shape=(1,), tau=1.0, phi="identity")
    net.connect("x", "A")
    lin = nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.fill_(2.0)
        lin.bias.fill_(10.0)
    net.connect("A", "B", lin, delay=delay, skip_initial=True)
    sol = dn.integrate(net, torch.ones(1, 1), t_end=5.0, dt=1.0)  # dt == tau: r_{n+1} = u_n
    b = sol.states["B"][:, 0, 0].tolist()
    k = int(delay)  # B's step n reads A at t_n - delay; absent while that is t0 or earlier
    expected = [0.0] + [0.0 if n <= k else 12.0 for n in range(5)]
    assert b == pytest.approx(expected)


# -- readout ---------------------------------------------------------------------------
def test_readout_modes():
    torch.manual_seed(0)
    traj = torch.randn(5, 2, 3, 2, 2)
    ts = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    last = Readout("A", (3, 2, 2), 4)
    torch.testing.assert_close(last(traj), last.linear(traj[-1].mean(dim=(2, 3))))
    mean = Readout("A", (3, 2, 2), 4, at="mean", window=(2.0, 3.0))
    mean.load_state_dict(last.state_dict())
    torch.testing.assert_close(mean(traj, ts), last.linear(traj[2:4].mean(0).mean(dim=(2, 3))))
    every = Readout("A", (3, 2, 2), 4, at="every", pool="flatten")
    assert every(traj, ts).shape == (5, 2, 4)
    with pytest.raises(dn.ConfigurationError, match="needs window"):
        Readout("A", (3, 2, 2), 4, at="mean")
    with pytest.raises(dn.ConfigurationError, match="holds no saved time"):
        Readout("A", (3, 2, 2), 4, at="mean", window=(10, 11))(traj, ts)


def test_readout_is_part_of_the_network():
    net = zoo.dyrcnn(2, num_classes=3, width=0.25)
    assert "readout.linear.weight" in net.state_dict()
    assert any(p is net.readout.linear.weight for p in net.parameters())
    with pytest.raises(dn.ConfigurationError, match="does not have"):
        net.set_readout(Readout("V9", (3,), 2))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        sol = dn.integrate(net, x, t_end=40.0, dt=2.0)
        torch.testing.assert_close(net.decode(sol), Classifier(net)(x))


# -- stability and summary -------------------------------------------------------------
def test_spectral_radius_of_known_operators():
    op = recurrence("self", 3)
    with torch.no_grad():
        op.weight.copy_(torch.tensor([0.3, -0.7, 0.5]))
    assert spectral_radius(op, (3, 4, 4)) == pytest.approx(0.7, rel=1e-4)
    torch.manual_seed(0)
    m = torch.randn(6, 6) / 3  # non-symmetric: complex eigenvalues
    pw = nn.Conv2d(6, 6, 1, bias=True)
    with torch.no_grad():
        pw.weight.copy_(m.view(6, 6, 1, 1))
    rho = torch.linalg.eigvals(m).abs().max().item()
    assert spectral_radius(pw, (6, 3, 3), iters=2000) == pytest.approx(rho, rel=2e-2)
    # a non-affine operator is linearised at 0: tanh(0.5 x) has Jacobian 0.5 I
    assert spectral_radius(nn.Sequential(nn.Tanh()), (4,)) == pytest.approx(1.0, rel=1e-4)


def test_stability_report_and_summary():
    net = dn.Network()
    net.add_input("x", shape=(3, 4, 4))
    net.add_population("A", shape=(3, 4, 4), tau=5.0)
    net.add_population("B", shape=(2, 2, 2), tau=10.0)
    net.connect("x", "A")
    rec = recurrence("self", 3)
    with torch.no_grad():
        rec.weight.copy_(torch.tensor([0.2, -0.9, 0.4]))
    net.connect("A", "A", rec, delay=4.0)
    net.connect("A", "B", delay=2.0)
    net.set_readout(Readout("B", (2, 2, 2), 5))
    rows = {r.name: r for r in stability_report(net, dt=1.0)}
    assert rows["A"].spectral_radius == pytest.approx(0.9, rel=1e-4)
    assert rows["B"].spectral_radius is None
    assert rows["A"].dt_over_tau == pytest.approx(0.2) and rows["B"].dt_over_tau == pytest.approx(0.1)
    assert rows["A"].params == 3 and rows["B"].params == 3 * 2  # the 1x1 projection
    assert dict((s, d) for s, d, _ in rows["A"].incoming) == {"x": 0.0, "A": 4.0}
    buf = io.StringIO()
    text = dn.models.summary(net, dt=1.0, file=buf)
    assert buf.getvalue().strip() == text.strip()
    for needle in ("A ", "(3, 4, 4)", "0.9", "A @ 4", "B ", "0.1", "readout", "total parameters: 24"):
        assert needle in text, needle


# -- retina ----------------------------------------------------------------------------
def test_retina_balanced_dog_ignores_uniform_light_and_normalises_contrast():
    r = Retina(3, kernel_size=9, eps=1e-3)
    flat = torch.full((1, 3, 32, 32), 0.7)
    assert r(flat)[..., 8:-8, 8:-8].abs().max() < 1e-4  # centre: no response to uniform light
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    y1, y2 = r(x), r(10 * x + 3)  # contrast gain and offset: normalised away
    torch.testing.assert_close(y1[..., 8:-8, 8:-8], y2[..., 8:-8, 8:-8], atol=2e-3, rtol=1e-2)
    assert Retina(3, on_off=True)(x).shape == (2, 6, 32, 32)


def test_retina_learnable_and_fixed():
    fixed = Retina(1)
    assert not list(fixed.parameters()) and "log_sigma" in fixed.state_dict()
    learn = Retina(1, learnable=True)
    learn(torch.rand(1, 1, 16, 16)).square().sum().backward()
    assert learn.log_sigma.grad.abs().sum() > 0 and learn.surround_weight.grad is not None
    with pytest.raises(dn.ConfigurationError, match="sigma_center < sigma_surround"):
        Retina(1, sigma_center=3.0, sigma_surround=1.0)
    net = dn.Network()
    net.add_input("image", shape=(3, 16, 16))
    net.add_population("V1", shape=(4, 16, 16), tau=5.0)
    net.connect("image", "V1", nn.Sequential(Retina(3), nn.Conv2d(3, 4, 3, padding=1)))
    assert dn.integrate(net, torch.rand(1, 3, 16, 16), t_end=2.0, dt=1.0).states["V1"].shape == (3, 1, 4, 16, 16)


# -- activations -----------------------------------------------------------------------
def test_activations_by_name_with_parameters():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0])
    torch.testing.assert_close(get_activation("supralinear", n=1.8, k=0.8)(x),
                               0.8 * torch.sign(x) * x.abs() ** 1.8)
    torch.testing.assert_close(get_activation("rectified_power", n=2.0, k=0.5)(x), 0.5 * torch.relu(x) ** 2)
    torch.testing.assert_close(get_activation("softplus", beta=2.0)(x), F.softplus(x, beta=2.0))
    torch.testing.assert_close(get_activation("tanh")(x), torch.tanh(x))
    m = nn.ReLU()
    assert get_activation(m) is m
    pair = get_activation(("rectified_power", {"n": 3.0, "k": 2.0}))
    torch.testing.assert_close(pair(x), 2.0 * torch.relu(x) ** 3)
    with pytest.raises(dn.ConfigurationError, match="not both"):
        get_activation(("supralinear", {"n": 2.0}), k=1.0)
    with pytest.raises(dn.ConfigurationError, match="does not take"):
        get_activation("supralinear", beta=2.0)
    net = dn.Network()
    net.add_input("x", shape=(5,))
    net.add_population("A", shape=(5,), tau=1.0, pipeline=["sum", ("supralinear", {"n": 2.0, "k": 0.5})])
    net.connect("x", "A")
    sol = dn.integrate(net, x, t_end=1.0, dt=1.0)
    torch.testing.assert_close(sol.states["A"][1, 0], 0.5 * torch.sign(x) * x.abs() ** 2)


# -- speed options ---------------------------------------------------------------------
def test_channels_last_and_autocast_keep_the_model():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    net = zoo.cornet_rt(num_classes=5, times=3, input_shape=(3, 64, 64), width=0.5)
    with torch.no_grad():
        ref = Classifier(net)(x)
        fast = prepare_for_speed(Classifier(net), channels_last=True)
        got = fast(x)
        sol = dn.integrate(net, x.contiguous(memory_format=torch.channels_last), t_end=30.0, dt=10.0)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert sol.final_state["V2"].is_contiguous(memory_format=torch.channels_last)
    net2 = zoo.dyrcnn(2, num_classes=5, width=0.5)
    with torch.no_grad():
        ref = Classifier(net2)(x[:, :, :32, :32])
        bf = prepare_for_speed(Classifier(net2), channels_last=False, autocast=torch.bfloat16)
        got = bf(x[:, :, :32, :32])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=0.05 * ref.abs().max().item(), rtol=0.05)
    with pytest.raises(dn.ConfigurationError, match="already applied"):
        prepare_for_speed(bf)
    with torch.no_grad():
        ref = Classifier(net)(x)
        low = prepare_for_speed(Classifier(net), channels_last=False, autocast=torch.bfloat16,
                                low_precision_states=True)
        got = low(x)
        assert low.speed.state_dtype == torch.bfloat16 and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=0.05 * ref.abs().max().item(), rtol=0.05)
    with pytest.raises(dn.ConfigurationError, match="needs autocast"):
        prepare_for_speed(Classifier(zoo.dyrcnn(2, width=0.25)), low_precision_states=True)
    with pytest.raises(dn.ConfigurationError, match="float16 autocast is for CUDA"):
        prepare_for_speed(Classifier(zoo.dyrcnn(2, width=0.25)), autocast=torch.float16)


@pytest.mark.slow
def test_compile_switch_keeps_outputs_and_state_dict_keys():
    torch.manual_seed(0)
    net = zoo.dyrcnn(2, num_classes=3, width=0.25)
    keys = list(net.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = Classifier(net)(x)
    model = prepare_for_speed(Classifier(net), channels_last=False, compile=True,
                              compile_options={"backend": "aot_eager"})
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert list(net.state_dict()) == keys
    assert model.speed.compile


def test_euler_dt_equal_tau_is_the_discrete_rnn_without_aliasing():
    """dt == tau: r_{n+1} = Phi(u_n) exactly; an identity Phi never hands out an input tensor
    itself as a state."""
    net = dn.Network()
    net.add_input("x", shape=(3,))
    net.add_population("A", shape=(3,), tau=2.0, phi="identity")
    net.add_population("B", shape=(3,), tau=2.0, phi="tanh")
    net.connect("x", "A")
    net.connect("A", "B", nn.Identity())
    x = torch.tensor([[0.5, -1.0, 2.0]])
    sol = dn.integrate(net, x, t_end=4.0, dt=2.0)
    torch.testing.assert_close(sol.states["A"][1], x, rtol=0, atol=0)
    torch.testing.assert_close(sol.states["B"][2], torch.tanh(x), rtol=0, atol=0)
    assert sol.final_state["A"] is not x and sol.final_state["A"].data_ptr() != x.data_ptr()

"""Zoo models: CORnet-RT against a plain unrolled implementation, shapes, state_dict, and
every model integrating its default number of steps with Euler and RK4."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import dynode as dn
from dynode.models import Classifier, zoo


# -- a plain, unrolled CORnet-RT written from the reference description ----------------------
class PlainBlock(nn.Module):
    def __init__(self, c_in, c_out, k, stride):
        super().__init__()
        self.conv_input = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)
        self.norm_input = nn.GroupNorm(32, c_out)
        self.conv1 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(32, c_out)

    def forward(self, inp, state):
        # inp None: the area gets no input yet (zeros); state None: no previous state (zeros)
        x = 0 if inp is None else torch.relu(self.norm_input(self.conv_input(inp)))
        x = x + (0 if state is None else state)
        if isinstance(x, int):
            x = torch.zeros(self.out_shape)
        return torch.relu(self.norm1(self.conv1(x)))


class PlainCORnetRT(nn.Module):
    AREAS = ("V1", "V2", "V4", "IT")

    def __init__(self, num_classes, times, in_hw, width=1.0):
        super().__init__()
        spec = ((3, 64, 7, 4), (64, 128, 3, 2), (128, 256, 3, 2), (256, 512, 3, 2))
        self.blocks = nn.ModuleDict()
        h = in_hw
        for name, (ci, co, k, s) in zip(self.AREAS, spec):
            ci = ci if name == "V1" else max(32, int(round(ci * width / 32)) * 32)
            co = max(32, int(round(co * width / 32)) * 32)
            self.blocks[name] = PlainBlock(ci, co, k, s)
            h = (h + 2 * (k // 2) - k) // s + 1
            self.blocks[name].out_shape = (co, h, h)
        self.times = times
        self.decoder = nn.Linear(co, num_classes)

    def forward(self, img):
        b = img.shape[0]
        for blk in self.blocks.values():
            blk.out_shape = (b, *blk.out_shape[-3:])
        out = {}
        for name in self.AREAS:  # step 0: only V1 sees the image
            out[name] = self.blocks[name](img if name == "V1" else None, None)
        for _ in range(1, self.times):
            below = {"V1": img, "V2": out["V1"], "V4": out["V2"], "IT": out["V4"]}
            out = {name: self.blocks[name](below[name], out[name]) for name in self.AREAS}
        return self.decoder(out["IT"].mean(dim=(2, 3)))


def copy_weights(net: dn.Network, plain: PlainCORnetRT) -> None:
    below = {"V1": "image", "V2": "V1", "V4": "V2", "IT": "V4"}
    with torch.no_grad():
        for name, blk in plain.blocks.items():
            pop = net.populations[name]
            stage = pop.incoming[below[name]]
            blk.conv_input.weight.copy_(stage[0].weight)
            blk.conv_input.bias.copy_(stage[0].bias)
            blk.norm_input.weight.copy_(stage[1].weight)
            blk.norm_input.bias.copy_(stage[1].bias)
            blk.conv1.weight.copy_(pop.phi[0].weight)
            blk.norm1.weight.copy_(pop.phi[1].weight)
            blk.norm1.bias.copy_(pop.phi[1].bias)
        plain.decoder.weight.copy_(net.readout.linear.weight)
        plain.decoder.bias.copy_(net.readout.linear.bias)


def _randomise_norms(net: dn.Network) -> None:
    """Non-trivial GroupNorm affine parameters, so that an area fed zeros differs from an area
    fed ``relu(GN(conv_in(0)))`` (the test must be able to tell the two apart)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))


@pytest.mark.parametrize("times", [1, 2, 5])
def test_cornet_rt_matches_plain_unrolled(times):
    torch.manual_seed(0)
    net = zoo.cornet_rt(num_classes=7, times=times, input_shape=(3, 64, 64))
    _randomise_norms(net)
    plain = PlainCORnetRT(7, times, 64)
    copy_weights(net, plain)
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = plain(img)
        sol = dn.integrate(net, img, t_end=net.protocol.t_end, dt=net.protocol.dt, solver="euler")
        ours = net.decode(sol)
        via_classifier = Classifier(net)(img)
    assert ours.shape == (2, 7)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(via_classifier, ref, atol=1e-5, rtol=1e-5)


def test_cornet_rt_upper_areas_get_no_input_at_step_zero():
    """With non-zero GroupNorm shifts, feeding op(0) instead of nothing changes V2 at step 1."""
    torch.manual_seed(0)
    net = zoo.cornet_rt(num_classes=3, times=1, input_shape=(3, 64, 64))
    _randomise_norms(net)
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        sol = dn.integrate(net, img, t_end=10.0, dt=10.0)
        pop = net.populations["V2"]
        expected = pop.phi(torch.zeros(1, *pop.shape))  # relu(GN(conv(0))) = relu(beta)
        wrong = pop.phi(pop.incoming["V1"](torch.zeros(1, *net.shape_of("V1"))))
    torch.testing.assert_close(sol.states["V2"][1], expected)
    assert (sol.states["V2"][1] - wrong).abs().max() > 1e-3


def test_cornet_rt_shapes_and_parameters():
    net = zoo.cornet_rt()
    assert [net.shape_of(n) for n in ("V1", "V2", "V4", "IT")] == [
        (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]
    # CORnet-RT's parameter count: block convs + norms + decoder
    n = 0
    for ci, co, k in ((3, 64, 7), (64, 128, 3), (128, 256, 3), (256, 512, 3)):
        n += ci * co * k * k + co + 2 * co + co * co * 9 + 2 * co
    n += 512 * 1000 + 1000
    assert sum(p.numel() for p in net.parameters()) == n
    assert net.protocol.dt == net.populations["V1"].tau


@pytest.mark.parametrize("build", [
    lambda: zoo.dyrcnn(4), lambda: zoo.dyrcnn(2, feedback=True), lambda: zoo.dyrcnn(8, feedback=True),
    lambda: zoo.cornet_rt(), lambda: zoo.cordsnet(), lambda: zoo.alexnet_like()])
def test_no_duplicated_parameters_in_state_dict(build):
    net = build()
    sd = net.state_dict()
    ptrs = [v.data_ptr() for v in sd.values() if v.numel()]
    assert len(ptrs) == len(set(ptrs))
    assert sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked")) == \
        sum(p.numel() for p in net.parameters()) + sum(b.numel() for _, b in net.named_buffers()
                                                         if _ in sd)


def test_dyrcnn_shapes_skips_and_feedback():
    net = zoo.dyrcnn(4, feedback=True)
    assert [net.shape_of(n) for n in ("V1", "V2", "V4", "IT")] == [
        (36, 16, 16), (64, 8, 8), (121, 4, 4), (256, 2, 2)]
    labels = {c.label: c for c in net.connections}
    for skip in ("V1 -> V4", "V2 -> IT"):
        c = labels[skip]
        assert c.delay == 0.0
        assert c.op.resize.mode == "area" and c.op.project.in_channels != c.op.project.out_channels
    for fb in ("V4 -> V1", "IT -> V2"):
        c = labels[fb]
        assert c.delay == 30.0 and c.op.resize.mode == "bilinear"
    assert labels["V1 -> V1"].delay == 6.0
    x = torch.randn(3, 36, 16, 16)
    assert labels["V1 -> V4"].op(x).shape == (3, 121, 4, 4)
    assert labels["IT -> V2"].op(torch.randn(3, 256, 2, 2)).shape == (3, 64, 8, 8)
    assert net.protocol == dn.RunProtocol(dt=2.0, t_end=40.0, solver="euler", steps=20)


def test_dyrcnn_rejects_unknown_depth_and_type():
    with pytest.raises(dn.ConfigurationError, match="depth must be one of"):
        zoo.dyrcnn(3)
    with pytest.raises(dn.ConfigurationError, match="known: self, full"):
        zoo.dyrcnn(4, "diagonal")
    with pytest.raises(dn.ConfigurationError, match="takes none"):
        zoo.dyrcnn(2, phi="relu", n=2.0)
    net = zoo.dyrcnn(2, phi="rectified_power", n=2.0, k=0.5)
    assert (net.populations["V1"].phi.n, net.populations["V1"].phi.k) == (2.0, 0.5)
    assert (zoo.dyrcnn(2).populations["IT"].phi.n, zoo.dyrcnn(2).populations["IT"].phi.k) == (1.8, 0.8)


def _run(net, solver, shape, batch=1):
    x = torch.rand(batch, *shape)
    proto = net.protocol
    sol_solver = proto.solver if solver == "euler" else solver
    stim = x
    if proto.stimulus_onset is not None:
        stim = dn.stimuli.Pulse(proto.stimulus_onset, proto.stimulus_duration, x)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", dn.StabilityWarning)
        sol = dn.integrate(net, stim, t_end=proto.t_end, dt=proto.dt, solver=sol_solver,
                           save_at=None if net.readout.at != "last" else (proto.t_end,))
        logits = net.decode(sol)
    assert sol.stats.steps == proto.steps
    assert torch.isfinite(logits).all()
    return logits


FAST = {
    "dyrcnn2": (lambda: zoo.dyrcnn(2, num_classes=5), (3, 32, 32)),
    "dyrcnn4": (lambda: zoo.dyrcnn(4, "local", num_classes=5, feedback=True), (3, 32, 32)),
    "cornet_rt": (lambda: zoo.cornet_rt(num_classes=5, input_shape=(3, 64, 64), width=0.5), (3, 64, 64)),
    "alexnet_like": (lambda: zoo.alexnet_like(num_classes=5, width=0.25), (3, 32, 32)),
    "dyrcnn8": (lambda: zoo.dyrcnn(8, "depthpointwise", num_classes=5, feedback=True), (3, 32, 32)),
    "cordsnet": (lambda: zoo.cordsnet(num_classes=5, width=1 / 16, input_shape=(3, 16, 16)), (3, 16, 16)),
}


@pytest.mark.parametrize("solver", ["euler", "rk4"])
@pytest.mark.parametrize("name", sorted(FAST))
def test_zoo_integrates_default_steps(name, solver):
    build, shape = FAST[name]
    logits = _run(build(), solver, shape)
    assert logits.shape == (1, 5)


def test_cordsnet_structure_and_protocol():
    net = zoo.cordsnet(num_classes=10)
    chans = [net.shape_of(f"A{i}")[0] for i in range(1, 9)]
    assert chans == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [net.shape_of(f"A{i}")[1] for i in range(1, 9)] == [32, 32, 16, 16, 8, 8, 4, 4]
    a5 = net.populations["A5"]
    assert set(a5.incoming) == {"A4", "A5", "A3"}  # below, itself, two below
    assert a5.bias.shape == (256, 8, 8)  # per-position bias
    p = net.protocol
    assert p.dt / net.populations["A1"].tau == pytest.approx(0.2)
    assert (p.stimulus_onset, p.stimulus_duration, p.t_end) == (200.0, 200.0, 600.0)


def test_alexnet_like_one_step_is_a_feedforward_pass():
    torch.manual_seed(0)
    net = zoo.alexnet_like(num_classes=4, width=0.25)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = x
        src = "image"
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
            pop = net.populations[name]
            h = pop.phi(pop.incoming[src](h))
            src = name
        ref = net.readout.linear(h.mean(dim=(2, 3)))
        got = Classifier(net)(x)
    torch.testing.assert_close(got, ref)


def test_classifier_trains_end_to_end():
    torch.manual_seed(0)
    net = zoo.dyrcnn(2, num_classes=3, width=0.25)
    model = Classifier(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    loss0 = None
    for _ in range(5):
        loss = dn.models.losses.classification_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss0 = loss0 if loss0 is not None else float(loss.detach())
    assert float(loss.detach()) < loss0

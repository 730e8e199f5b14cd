"""Model-zoo training steps: dynode versus hand-written plain PyTorch loops.

* ``dyrcnn4 train step``: ``dyrcnn(depth=4)``, batch 32, 3x32x32, 20 Euler steps (dt 2 ms,
  tau 5 ms, 6 ms recurrent delay), cross-entropy on the last step, backward, SGD step;
  baseline: the same modules driven by a plain loop with a hand-kept delay buffer.
  Target: dynode / plain <= 1.1.
* ``cornet_rt train step``: CORnet-RT, batch 16, 3x224x224, times 5 (``--quick``: batch 4,
  3x96x96); baseline: a plain unrolled CORnet-RT with the same weights. Targets:
  dynode / plain <= 1.05 (default mode), and dynode with the speed options
  (:func:`dynode.models.prepare_for_speed`: bf16 autocast where the CPU has bf16 units,
  with bf16 states as in a plain autocast loop, exact in meaning since ``dt == tau``;
  channels-last and ``torch.compile`` by environment switch, because on the 2-core CPU both
  measured slower and compiling takes minutes) at least 1.3x faster than the plain reference
  (ratio <= 0.77). A plain reference with the same options is listed for honesty.
"""

from __future__ import annotations

import os

import harness
import torch
import torch.nn.functional as F
from torch import nn

import dynode as dn
from dynode.models import Classifier, prepare_for_speed, zoo


def _sgd(params):
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)


def train_step(fn, params, x, y, prep=lambda v: v, autocast: torch.dtype | None = None):
    """One training step as a zero-argument callable: ``fn(prep(x))`` (under autocast on
    ``x``'s device when ``autocast`` is a dtype), cross-entropy with ``y``, backward, SGD."""
    opt = _sgd(params)

    def run():
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            logits = fn(prep(x))
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return run


# -- dyrcnn(depth=4) ---------------------------------------------------------------------
class PlainDyRCNN:
    """The dyrcnn(4) network as a hand-written loop over the same modules:
    ``r <- r + dt/tau (Phi(u) - r)``, recurrent input from ``delay/dt`` steps back."""

    def __init__(self, net: dn.Network):
        self.areas = list(net.populations)
        pops = net.populations
        self.ff = [pops[a].incoming["image" if i == 0 else self.areas[i - 1]] for i, a in enumerate(self.areas)]
        self.rec = [pops[a].incoming[a] for a in self.areas]
        self.skip = {i: pops[a].incoming[self.areas[i - 2]] for i, a in enumerate(self.areas) if i >= 2}
        self.phi = [pops[a].phi for a in self.areas]
        self.shapes = [pops[a].shape for a in self.areas]
        self.w = net.protocol.dt / pops[self.areas[0]].tau
        self.k = round(pops[self.areas[0]].delays[self.areas[0]] / net.protocol.dt)
        self.steps = net.protocol.steps
        self.readout = net.readout.linear

    def __call__(self, img):
        b = img.shape[0]
        r = [img.new_zeros(b, *s) for s in self.shapes]  # on the images' device
        past = [r] * self.k  # past[-k] is r(t - k dt)
        for _ in range(self.steps):
            old = past[-self.k]
            new = []
            for i in range(len(self.areas)):
                u = self.ff[i](img if i == 0 else r[i - 1]) + self.rec[i](old[i])
                if i in self.skip:
                    u = u + self.skip[i](r[i - 2])
                new.append(r[i] + self.w * (self.phi[i](u) - r[i]))
            past = past[1:] + [r] if self.k > 1 else [r]
            r = new
        return self.readout(r[-1].mean(dim=(2, 3)))


def _dyrcnn_setup(quick: bool):
    torch.manual_seed(0)
    batch = 8 if quick else 32
    net = zoo.dyrcnn(4)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 100, (batch,))
    model, plain = Classifier(net), PlainDyRCNN(net)
    with torch.no_grad():  # the two are the same network
        torch.testing.assert_close(model(x), plain(x), atol=1e-4, rtol=1e-4)
    opt = _sgd(net.parameters())

    def step(fn):
        def run():
            loss = F.cross_entropy(fn(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run
    return {"plain loop": step(plain), "dynode": step(model)}


# -- CORnet-RT ---------------------------------------------------------------------------
class PlainBlock(nn.Module):
    def __init__(self, c_in, c_out, k, stride):
        super().__init__()
        self.conv_input = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)
        self.norm_input = nn.GroupNorm(32, c_out)
        self.conv1 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(32, c_out)

    def forward(self, inp, state, like):
        if inp is None and state is None:
            x = torch.zeros_like(like)
        else:
            x = 0 if inp is None else F.relu(self.norm_input(self.conv_input(inp)))
            x = x + (0 if state is None else state)
        return F.relu(self.norm1(self.conv1(x)))


class PlainCORnetRT(nn.Module):
    """The unrolled CORnet-RT of the reference (image at every step, upper areas without
    input at step 0), decoded from IT's last output."""

    AREAS = ("V1", "V2", "V4", "IT")

    def __init__(self, net: dn.Network, times: int):
        super().__init__()
        spec = {"V1": (7, 4), "V2": (3, 2), "V4": (3, 2), "IT": (3, 2)}
        self.blocks = nn.ModuleDict()
        below = {"V1": "image", "V2": "V1", "V4": "V2", "IT": "V4"}
        with torch.no_grad():
            for a in self.AREAS:
                pop = net.populations[a]
                stage = pop.incoming[below[a]]
                blk = PlainBlock(stage[0].in_channels, stage[0].out_channels, *spec[a])
                blk.conv_input.load_state_dict(stage[0].state_dict())
                blk.norm_input.load_state_dict(stage[1].state_dict())
                blk.conv1.load_state_dict(pop.phi[0].state_dict())
                blk.norm1.load_state_dict(pop.phi[1].state_dict())
                self.blocks[a] = blk
        self.decoder = nn.Linear(net.readout.linear.in_features, net.readout.linear.out_features)
        self.decoder.load_state_dict(net.readout.linear.state_dict())
        self.shapes = {a: net.populations[a].shape for a in self.AREAS}
        self.times = times
        self.memory_format = torch.contiguous_format

    def forward(self, img):
        b = img.shape[0]
        out = {}
        for a in self.AREAS:
            like = img.new_zeros(b, *self.shapes[a]).contiguous(memory_format=self.memory_format)
            out[a] = self.blocks[a](img if a == "V1" else None, None, like)
        for _ in range(1, self.times):
            below = {"V1": img, "V2": out["V1"], "V4": out["V2"], "IT": out["V4"]}
            out = {a: self.blocks[a](below[a], out[a], None) for a in self.AREAS}
        return self.decoder(out["IT"].mean(dim=(2, 3)))


def _bf16_supported() -> bool:
    """bf16 units on this CPU, or ``DYNODE_BENCH_BF16=1`` (measure the bf16 path anyway: without
    the units torch emulates bf16 and both bf16 contenders are slower than fp32, but their ratio
    still shows whether dynode's low-precision states are honoured)."""
    if os.environ.get("DYNODE_BENCH_BF16") == "1":
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def _cornet_setup(quick: bool):
    torch.manual_seed(0)
    batch, hw = (4, 96) if quick else (16, 224)
    times = 5
    x, y = torch.rand(batch, 3, hw, hw), torch.randint(0, 1000, (batch,))

    def build():
        torch.manual_seed(0)
        net = zoo.cornet_rt(1000, times, input_shape=(3, hw, hw))
        return net

    net = build()
    model = Classifier(net)
    plain = PlainCORnetRT(net, times)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), atol=1e-4, rtol=1e-4)
    bf16 = torch.bfloat16 if _bf16_supported() else None
    # channels-last helps cuDNN; on this CPU (oneDNN, GroupNorm) it measured slower, so the CPU
    # preset leaves it off unless DYNODE_BENCH_CHANNELS_LAST=1
    chl = os.environ.get("DYNODE_BENCH_CHANNELS_LAST") == "1"
    fast = prepare_for_speed(Classifier(build()), channels_last=chl, autocast=bf16,
                             low_precision_states=bf16 is not None,  # dt == tau: r = Phi(u)
                             compile=os.environ.get("DYNODE_BENCH_COMPILE") == "1")
    if bf16 is not None:  # the preset must really run bf16 states (a silent float32 run was issue 26)
        with torch.no_grad(), fast.speed.autocast_context():
            init = fast.network.init_state(2, dtype=bf16)
            sol = dn.integrate(fast.network, x[:2], t_end=fast.t_end, dt=fast.dt, solver=fast.solver,
                               initial_state=init, save_at=[fast.t_end])
        got = {str(v.dtype) for v in sol.final_state.values()}
        if got != {"torch.bfloat16"}:
            raise RuntimeError(f"prepare_for_speed(low_precision_states=True) ran {got} states, not bf16")
    plain_cl = PlainCORnetRT(build(), times)
    if chl:
        plain_cl = plain_cl.to(memory_format=torch.channels_last)
        plain_cl.memory_format = torch.channels_last

    cl = (lambda v: v.contiguous(memory_format=torch.channels_last)) if chl else (lambda v: v)  # noqa: E731
    return {
        "plain unrolled": train_step(plain, plain.parameters(), x, y),
        "dynode": train_step(model, model.parameters(), x, y),
        "dynode + speed options": train_step(fast, fast.parameters(), x, y),
        "plain + same options": train_step(plain_cl, plain_cl.parameters(), x, y, cl, bf16),
    }


BENCHMARKS = [
    harness.Benchmark("dyrcnn4 train step (b32, 3x32x32, 20 steps)", _dyrcnn_setup,
                      target={"dynode": 1.1},
                      note="fwd+bwd+SGD; --quick: batch 8"),
    harness.Benchmark("cornet_rt train step (b16, 3x224x224, times 5)", _cornet_setup,
                      target={"dynode": 1.05, "dynode + speed options": 1 / 1.3},
                      note="--quick: batch 4, 3x96x96; speed = bf16 autocast (if the CPU has bf16 "
                           "units, or DYNODE_BENCH_BF16=1) [+ channels-last with DYNODE_BENCH_CHANNELS_LAST=1, + torch.compile "
                           "with DYNODE_BENCH_COMPILE=1]"),
]

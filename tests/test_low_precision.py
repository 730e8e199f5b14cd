"""Low-precision states (issue 26, item 1): a bfloat16 initial state given inside bf16
autocast makes the run's state dtype bfloat16 end to end -- the stimulus is cast to it, the
history, the solver's stages and the saved states are in it -- while the parameters stay
float32; ``prepare_for_speed(autocast=torch.bfloat16, low_precision_states=True)`` relies on
it. Outside autocast such a state is refused with a message that names the ways out, and
float32 runs are unchanged.

(Since 186159b the run's dtype was taken from the parameters first, so a bf16 initial state
was silently converted to float32 and ``low_precision_states=True`` did nothing.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dynode as dn
from dynode.errors import ConfigurationError
from dynode.models import Classifier, prepare_for_speed, zoo

BF16 = torch.bfloat16


def small_net() -> dn.Network:
    """dyrcnn(2): image -> V1 -> IT, 6 ms recurrent delays on a 2 ms grid (a history is kept)."""
    torch.manual_seed(0)
    return zoo.dyrcnn(2, num_classes=5, width=0.25)


def record_input_dtype(module: nn.Module, seen: list) -> None:
    module.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
def test_bf16_initial_state_under_autocast_runs_in_bf16(solver):
    net = small_net()
    x = torch.rand(2, 3, 32, 32)
    images: list = []
    record_input_dtype(net.populations["V1"].incoming["image"], images)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        sol = dn.integrate(net, x, t_end=12.0, dt=2.0, solver=solver, initial_state=net.init_state(2, dtype=BF16))
        assert {p: s.dtype for p, s in sol.states.items()} == {"V1": BF16, "IT": BF16}
        tail = sol.tail  # the delayed past the run kept: its history, in the state dtype
        assert {v.dtype for s in (*tail.states, tail.before) for v in s.values()} == {BF16}
        assert set(images) == {BF16}  # the stimulus was cast to the state dtype
        # a continuation keeps the dtype
        more = dn.integrate(net, x, t0=12.0, t_end=16.0, dt=2.0, solver=solver, initial_state=sol)
        assert {s.dtype for s in more.states.values()} == {BF16}
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    # the same run in float32 (no autocast): close in meaning
    with torch.no_grad():
        ref = dn.integrate(net, x, t_end=12.0, dt=2.0, solver=solver)
    for p in ref.states:
        scale = ref.states[p].abs().max().item()
        torch.testing.assert_close(sol.states[p].float(), ref.states[p], atol=0.05 * scale, rtol=0.05)


def test_prepare_for_speed_low_precision_states_reach_the_readout():
    """The Classifier's states (what the readout decodes) are bf16 with
    ``low_precision_states=True`` and float32 without; the logits are float32 either way."""
    x = torch.rand(2, 3, 32, 32)
    for low, want in ((True, BF16), (False, torch.float32)):
        model = prepare_for_speed(Classifier(small_net()), channels_last=False, autocast=BF16,
                                  low_precision_states=low)
        decoded: list = []
        record_input_dtype(model.network.readout, decoded)
        with torch.no_grad():
            logits = model(x)
        assert decoded == [want] and logits.dtype == torch.float32
        assert model.speed.state_dtype == (BF16 if low else None)


def test_low_precision_states_are_refused_where_they_cannot_run():
    net, x = small_net(), torch.rand(2, 3, 32, 32)
    with pytest.raises(ConfigurationError, match=r"initial_state is bfloat16 but the model's parameters are "
                                                 r"float32 and no cpu autocast is active.*low_precision_states=True"
                                                 r".*net.to\(torch.bfloat16\).*float32 states"):
        dn.integrate(net, x, t_end=4.0, dt=2.0, initial_state=net.init_state(2, dtype=BF16))
    with torch.autocast("cpu", dtype=BF16), pytest.raises(
            ConfigurationError, match=r"initial_state is float16 .* autocast runs in bfloat16"):
        dn.integrate(net, x, t_end=4.0, dt=2.0, initial_state=net.init_state(2, dtype=torch.float16))
    mixed = {"V1": torch.zeros(2, 16, 32, 32, dtype=BF16), "IT": torch.zeros(2, 64, 16, 16)}
    with torch.autocast("cpu", dtype=BF16), pytest.raises(
            ConfigurationError, match=r"initial_state mixes dtypes \(bfloat16, float32\)"):
        dn.integrate(net, x, t_end=4.0, dt=2.0, initial_state=mixed)
    # parameters of two dtypes stay refused, whatever the state
    net.populations["IT"].incoming["IT"].double()
    with torch.autocast("cpu", dtype=BF16), pytest.raises(ConfigurationError,
                                                          match=r"parameters do not share one dtype"):
        dn.integrate(net, x, t_end=4.0, dt=2.0, initial_state=net.init_state(2, dtype=BF16))


def test_a_bf16_model_runs_bf16_states_without_autocast():
    net = small_net().to(BF16)
    with torch.no_grad():
        sol = dn.integrate(net, torch.rand(1, 3, 32, 32), t_end=4.0, dt=2.0, initial_state=net.init_state(1))
    assert {s.dtype for s in sol.states.values()} == {BF16}


def test_float32_runs_are_unchanged():
    """float32 and float64 initial states run in the parameters' float32, bit for bit the run
    without an initial state; bf16 autocast without low-precision states keeps float32 states."""
    net, x = small_net(), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = dn.integrate(net, x, t_end=8.0, dt=2.0)
        for dtype in (torch.float32, torch.float64):
            sol = dn.integrate(net, x.to(dtype), t_end=8.0, dt=2.0, initial_state=net.init_state(2, dtype=dtype))
            for p in ref.states:
                assert sol.states[p].dtype == torch.float32
                assert torch.equal(sol.states[p], ref.states[p])
        with torch.autocast("cpu", dtype=BF16):
            amp = dn.integrate(net, x, t_end=8.0, dt=2.0, initial_state=net.init_state(2))
    assert {s.dtype for s in amp.states.values()} == {torch.float32}

"""Events (issue 25, item 2): a run that watches events against the same run without them.

conv4 (the compute-bound 4-layer conv field of ``bench_core``: batch 32, 3x32x32, dt 2 ms, tau
5 ms, 20 steps, recurrence delayed 6 ms), forward under ``torch.no_grad``, Euler and RK4. The
event is a readout's decision: the mean rate of IT (256 x 4 x 4 per sample) crossing a level,
per sample. Per step the tracker evaluates ``g`` once for the detection and
``dynode.events.ITERATIONS`` times for the location on the step's interpolant (of the
populations ``g`` reads only), all on the device; the only host read is once per
``check_every`` steps. ``terminal`` adds the per-step hold of every population (the interpolant
of the whole state at the event, two ``where`` per population); its level is out of reach here,
so both contenders take every step.

Target (issue 25): events cost at most 5 % over the run without them.
"""

from __future__ import annotations

import torch

import dynode as dn
from dynode.events import Event
from harness import Benchmark
from nets import conv4_network


def decision(t, state):
    """The IT population's mean rate minus a level (a readout crossing a threshold)."""
    return state["IT"].flatten(1).mean(1) - 1e3


def conv_setup(solver: str):
    def setup(quick: bool):
        batch, steps = (8, 5) if quick else (32, 20)
        torch.manual_seed(0)
        x = torch.randn(batch, 3, 32, 32)
        net = conv4_network(rec_delay=6.0)

        def run(events):
            def go():
                with torch.no_grad():
                    dn.integrate(net, x, t_end=steps * 2.0, dt=2.0, solver=solver, events=events)
            return go

        return {f"{solver}, no events": run(None), f"{solver}, event": run({"decision": decision}),
                f"{solver}, terminal event": run({"decision": Event(decision, terminal=True)})}
    return setup


BENCHMARKS = [
    Benchmark("conv4 events, Euler fwd", conv_setup("euler"),
              {"euler, event": 1.05, "euler, terminal event": 1.05},
              note="IT mean crossing a level; batch 32, 20 steps"),
    Benchmark("conv4 events, RK4 fwd", conv_setup("rk4"),
              {"rk4, event": 1.05, "rk4, terminal event": 1.05}),
]

r"""Ensembles of small rate networks: a loop of runs vs one batched run (issue 14, item 4).

The ensemble: ``M`` parameter sets of one E/I rate network (64 + 64 units, a 16-dim input,
delayed E<->I loop of 2 ms), each ``tau dr/dt = -r + relu(W_in x + W r(t - d))``, Euler,
``dt = 1`` ms, 200 ms, batch 8.

* ``loop``: ``M`` calls of ``dn.integrate``, one network each (the baseline);
* ``population dim``: one ``dn.integrate`` of ``dn.models.ensemble.stack(members)``, whose
  populations carry the ensemble as a leading dimension (shape ``(M, 64)``) and whose
  operators are batched matrix products (``EnsembleLinear``: weights ``(M, out, in)``,
  ``einsum``). Same numbers (checked).

``torch.func.vmap`` over ``functional_call`` of ``dn.integrate`` does not run (the solver's
history buffers are written in place and read through data pointers: "Cannot access data
pointer of Tensor that doesn't have storage"), so it is not a contender.
"""

from __future__ import annotations

import torch
from torch import nn

import dynode as dn
from harness import Benchmark

T_END, DT, BATCH, N, N_IN = 200.0, 1.0, 8, 64, 16


def member(seed: int) -> dn.Network:
    g = torch.Generator().manual_seed(seed)
    net = dn.Network()
    net.add_input("x", (N_IN,))
    net.add_population("E", (N,), tau=10.0, phi="relu")
    net.add_population("I", (N,), tau=5.0, phi="relu")
    w_in, w_ei, w_ie = nn.Linear(N_IN, N), nn.Linear(N, N, bias=False), nn.Linear(N, N, bias=False)
    with torch.no_grad():
        for lin, scale in ((w_in, 1.0), (w_ei, 0.8), (w_ie, -0.8)):
            lin.weight.copy_(torch.rand(lin.weight.shape, generator=g) * scale / lin.in_features ** 0.5)
    net.connect("x", "E", w_in)
    net.connect("E", "I", w_ei, delay=2.0)
    net.connect("I", "E", w_ie, delay=2.0)
    return net


def setup(m: int):
    def make(quick: bool):
        members = [member(i) for i in range(m)]
        big = dn.models.ensemble.stack(members)
        x = torch.rand(BATCH, N_IN, generator=torch.Generator().manual_seed(0))
        t_end = 50.0 if quick else T_END

        @torch.no_grad()
        def loop():
            return torch.stack([dn.integrate(mb, {"x": x}, t_end=t_end, dt=DT).final_state["E"]
                                for mb in members], 1)

        @torch.no_grad()
        def batched():
            return dn.integrate(big, {"x": x}, t_end=t_end, dt=DT).final_state["E"]

        diff = float((loop() - batched()).abs().max())
        assert diff < 1e-5, f"the batched ensemble differs from the loop by {diff}"
        return {"loop": loop, "population dim": batched}
    return make


BENCHMARKS = [
    Benchmark(f"rate E/I ensemble M={m}", setup(m), {"population dim": 0.5},
              note=f"{m} members, 64+64 units, batch {BATCH}, {int(T_END / DT)} Euler steps")
    for m in (8, 64)
]

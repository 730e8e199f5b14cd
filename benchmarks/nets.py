"""Networks shared by the benchmarks (and usable from tests): the core issue's two fields."""

from __future__ import annotations

import torch
from torch import nn

import dynode as dn

CONV_CHANNELS = (36, 64, 121, 256)
CONV_AREAS = ("V1", "V2", "V4", "IT")


def conv4_network(*, rec_delay: float = 6.0, tau: float = 5.0, in_shape=(3, 32, 32),
                  seed: int = 0, phi: str = "relu", learn: bool = False) -> dn.Network:
    """4-layer conv field: V1-V2-V4-IT with 36/64/121/256 channels, 3x3 convs (stride 1, then
    2), full 3x3 recurrence with delay ``rec_delay`` (ms), ``phi`` (relu), tau 5 ms; ``learn``:
    every tau and recurrent delay learnt (default bounds: half to twice the value)."""
    torch.manual_seed(seed)
    net = dn.Network()
    net.add_input("image", shape=in_shape)
    c_prev, h = in_shape[0], in_shape[1]
    src = "image"
    for i, (name, c) in enumerate(zip(CONV_AREAS, CONV_CHANNELS)):
        stride = 1 if i == 0 else 2
        h = h if i == 0 else (h + 1) // 2
        net.add_population(name, shape=(c, h, h), tau=tau, phi=phi, learn_tau=learn)
        net.connect(src, name, nn.Conv2d(c_prev, c, 3, stride=stride, padding=1))
        rec = nn.Conv2d(c, c, 3, padding=1, bias=False)
        nn.init.normal_(rec.weight, std=0.1 / (3 * c ** 0.5))
        net.connect(name, name, rec, delay=rec_delay, learn_delay=learn)
        src, c_prev = name, c
    return net


def rate_network(*, n_pop: int = 4, units: int = 64, rec_delay: float = 2.0, tau: float = 5.0,
                 seed: int = 0) -> dn.Network:
    """Overhead-bound field: ``n_pop`` populations of ``units`` rates, a linear chain from the
    input plus linear self-recurrence with delay ``rec_delay`` (ms), relu, tau 5 ms."""
    torch.manual_seed(seed)
    net = dn.Network()
    net.add_input("x", shape=(units,))
    src = "x"
    for i in range(n_pop):
        name = f"P{i}"
        net.add_population(name, shape=(units,), tau=tau, phi="relu")
        net.connect(src, name, nn.Linear(units, units))
        rec = nn.Linear(units, units, bias=False)
        nn.init.normal_(rec.weight, std=0.5 / units ** 0.5)
        net.connect(name, name, rec, delay=rec_delay)
        src = name
    return net

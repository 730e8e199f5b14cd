"""Networks built for fitting: :func:`dn_network`, the delayed-normalisation model of Zhou et
al. 2019 and Groen et al. 2022 as a dynode network whose every time is learnt."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dynode.models.normalization import Divide, Pool
from dynode.network import Network

__all__ = ["dn_network"]


def dn_network(areas: Sequence[str] = ("V1",), *, tau1: float = 5.0, shift: float = 60.0, tau2: float = 70.0,
               sigma: float = 0.15, n: float = 1.5, tau: float = 2.0, tau1_bounds=(1.0, 100.0),
               shift_bounds=(2.0, 150.0), tau2_bounds=(5.0, 1000.0), tau_bounds=(1.0, 50.0),
               input: str = "x") -> Network:
    r"""A dynode network with the structure of the delayed normalisation model
    (:mod:`dynode.analysis.dn`; Zhou et al. 2019, Groen et al. 2022), one independent chain per
    area ``A`` fed by the scalar input ``input`` (the contrast envelope), every time learnt:

    .. math::

        \tau_1 \dot l_1 = -l_1 + s(t), \qquad \tau_1' \dot l_2 = -l_2 + l_1(t - \delta)
        \qquad \text{(a gamma-2 impulse response, delayed by } \delta\text{)}\\
        \tau_2 \dot g = -g + |l_2|, \qquad
        \tau \dot r = -r + \mathrm{relu}\!\Big(\frac{l_2}{\sigma + g}\Big)^{n}

    Populations ``{A}_l1``, ``{A}_l2`` (role ``"linear"``), ``{A}_pool`` (role
    ``"normalization"``) and the area ``A``; learnt: ``tau:{A}_l1``, ``tau:{A}_l2`` (start
    ``tau1``), ``delay:{A}_l1->{A}_l2`` (``shift``), ``tau:{A}_pool`` (``tau2``), ``sigma:A``
    (``sigma``) and ``tau:A`` (``tau``, the output's own time constant); ``n`` is fixed. Start
    values: Groen's DN start values (:data:`dynode.analysis.dn.DN_START`, ms). The DN model's
    ``sigma^n + |P|^n`` becomes ``(sigma + g)^n`` here and its ``scale`` the observation gain.
    Float64 (a fit asserts accuracies).
    """
    if isinstance(areas, str):
        areas = [areas]
    net = Network()
    net.add_input(input, (1,))
    for a in areas:
        with net.atomic():
            l1, l2, pool = f"{a}_l1", f"{a}_l2", f"{a}_pool"
            net.add_population(l1, (1,), tau=tau1, phi="identity", learn_tau=True, tau_bounds=tau1_bounds)
            net.add_population(l2, (1,), tau=tau1, phi="identity", learn_tau=True, tau_bounds=tau1_bounds)
            net.add_population(pool, (1,), tau=tau2, phi="identity", learn_tau=True, tau_bounds=tau2_bounds)
            net.add_population(a, (1,), tau=tau, phi="rectified_power", n=n, k=1.0, learn_tau=True,
                               tau_bounds=tau_bounds)
            net.populations[l1].role = net.populations[l2].role = "linear"
            net.populations[pool].role = "normalization"
            net.connect(input, l1)
            net.connect(l1, l2, delay=shift, learn_delay=True, delay_bounds=shift_bounds)
            net.connect(l2, pool, Pool((1,), "unit", 1.0, learn=False))
            net.connect(l2, a)
            net.set_combine(a, Divide(pool, sigma))
            net.connect(pool, a, nn.Identity())
    return net.to(torch.float64)

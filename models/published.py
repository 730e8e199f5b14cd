r"""The four-area DyRCNN exactly as published (the seed toolbox's ``DyRCNNx4``), in dynode's formalism.

:func:`dynode.models.dyrcnn` is dynode's own, cheaper member of the family (stride-2
convolutions, states 36x16x16 ... 256x2x2 at 32x32 input). :func:`dyrcnn_published` builds the
architecture of the paper's toolbox, with its state shapes and parameter count:

=====  ====================================================  =========================
area   drive ``u`` (``r_below`` read ``feedforward_delay`` ago)  state at 3x32x32 input
=====  ====================================================  =========================
V1     ``Conv3x3(image) + W_V1 r_V1(t - d_rec)``                36 x 32 x 32
V2     ``Conv3x3(MaxPool3/2(r_V1)) + W_V2 r_V2(t - d_rec)``     64 x 16 x 16
V4     ``Conv3x3(MaxPool3/2(r_V2)) + W_V4 r_V4 + A(r_V1)``      121 x 8 x 8
IT     ``Conv3x3/2(r_V4) + W_IT r_IT + A(r_V2)``                256 x 4 x 4
=====  ====================================================  =========================

every convolution with a bias, the recurrence ``W`` of any type with a bias, skip adapters
``A`` = ``1 x 1`` convolution with bias and a resize (resize first: the two are linear maps on
different axes and a resize keeps constants, so the result equals the toolbox's
project-then-resize at 1/16 of the cost), a readout (average pool, linear) applied at every
step (``readout_at="every"``, as the toolbox classifies every step). For 100 classes at
3x32x32 the network has 1,188,080 weights; the toolbox counts 1,188,084 because it also
registers each area's ``tau`` as a parameter (trained with its ``train_tau``):
``train_tau=True`` does the same here (one learnt tau per area, kept inside ``tau_bounds``,
default ``(tau / 2, 2 tau)``; see :class:`dynode.population.Bounded`), and the count is then
1,188,084.

Deliberate differences from the toolbox, which dynode keeps because they are the paper's
equation:

* ``Phi`` acts inside the ODE, ``tau dr/dt = -r + Phi(u)``; the toolbox applies its
  nonlinearity after the Euler update (``r <- Phi(r + dt/tau (-r + u))``). Fixed points
  agree; transients differ.
* Under the default simultaneous Euler a delay ``d`` reads ``r(t - d)`` exactly; the toolbox
  updates areas in sequence, so a read one step later than its nominal delay.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from dynode.errors import ConfigurationError
from dynode.network import Network, RunProtocol
from dynode.adapters import Adapter, Resize
from dynode.models.readout import Readout
from dynode.models.recurrence import recurrence

__all__ = ["dyrcnn_published", "PUBLISHED_AREAS"]

PUBLISHED_AREAS = (("V1", 36), ("V2", 64), ("V4", 121), ("IT", 256))
"""Areas and channels of the published four-area DyRCNN."""


def _pooled(size: int) -> int:
    return (size + 2 - 3) // 2 + 1  # MaxPool2d(3, stride=2, padding=1)


def dyrcnn_published(recurrence_type: str = "full", input_shape: Sequence[int] = (3, 32, 32),
                     num_classes: int = 100, *, tau: float = 5.0, dt: float = 2.0, steps: int = 20,
                     recurrence_delay: float = 6.0, feedforward_delay: float = 0.0, skip: bool = True,
                     phi: str | nn.Module = "supralinear", n: float | None = None, k: float | None = None,
                     readout_at: str = "every", readout_window: tuple[float, float] | None = None,
                     train_tau: bool = False, tau_bounds: tuple[float, float] | None = None):
    """The published four-area DyRCNN (see the module docstring for the equations).

    ``phi``, ``n``, ``k`` as in :func:`dynode.models.dyrcnn` (supralinear ``0.8 sign(x)
    |x|^1.8`` by default); ``readout_at="every"`` decodes every step as the toolbox does
    (``"last"`` or ``"mean"`` with a window also work). Protocol: ``t_end = steps * dt``.
    ``train_tau``: learn each area's ``tau`` inside ``tau_bounds`` (ms), as the toolbox's option.
    """
    c_in, h, w = (int(s) for s in input_shape)
    if h < 8 or w < 8:
        raise ConfigurationError(f"dyrcnn_published needs images of at least 8 x 8 pixels, got {h} x {w}")
    if phi in ("supralinear", "rectified_power"):
        phi_params = {"n": 1.8 if n is None else n, "k": 0.8 if k is None else k}
    elif n is not None or k is not None:
        raise ConfigurationError(f"dyrcnn_published: n and k parametrise the power-law activations; "
                                 f"phi={phi!r} takes none")
    else:
        phi_params = {}
    shapes = {}
    sizes = [(h, w), (_pooled(h), _pooled(w))]
    sizes.append((_pooled(sizes[1][0]), _pooled(sizes[1][1])))
    sizes.append(((sizes[2][0] - 1) // 2 + 1, (sizes[2][1] - 1) // 2 + 1))  # Conv3x3 stride 2, pad 1
    for (name, c), (hh, ww) in zip(PUBLISHED_AREAS, sizes):
        shapes[name] = (c, hh, ww)

    net = Network()
    net.add_input("image", shape=(c_in, h, w))
    src, c_prev = "image", c_in
    for i, (name, c) in enumerate(PUBLISHED_AREAS):
        net.add_population(name, shape=shapes[name], tau=tau, phi=phi, learn_tau=train_tau,
                           tau_bounds=tau_bounds, **phi_params)
        stride = 2 if name == "IT" else 1
        conv = nn.Conv2d(c_prev, c, 3, stride=stride, padding=1, bias=True)
        op = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), conv) if name in ("V2", "V4") else conv
        net.connect(src, name, op, delay=0.0 if src == "image" else feedforward_delay)
        net.connect(name, name, recurrence(recurrence_type, c, 3, bias=True), delay=recurrence_delay)
        src, c_prev = name, c
    if skip:
        for a, b in (("V1", "V4"), ("V2", "IT")):
            (ca, ha, wa), (cb, hb, wb) = shapes[a], shapes[b]
            net.connect(a, b, Adapter(Resize((ha, wa), (hb, wb)), nn.Conv2d(ca, cb, 1, bias=True)),
                        delay=feedforward_delay)
    net.set_readout(Readout("IT", shapes["IT"], num_classes, at=readout_at, window=readout_window))
    net.protocol = RunProtocol(dt=dt, t_end=steps * dt, solver="euler", steps=steps)
    return net

r"""The model zoo: ready networks (with readout and run protocol) in the one formalism
``tau dr/dt = -r + Phi(u)``.

Every builder returns a :class:`dynode.Network` with ``net.readout`` attached and
``net.protocol`` holding the defaults to run it (``dt``, ``t_end``, ``solver``, and for
CordsNet the stimulus window). ``dn.models.Classifier(net)(images)`` integrates and decodes.

* :func:`dyrcnn` -- the continuous-time RCNN family (2, 4 or 8 areas) of the reference:
  V1-V2-V4-IT with 36/64/121/256 channels, ``tau = 5`` ms, ``dt = 2`` ms, 20 steps,
  recurrence of any :data:`~dynode.models.recurrence.RECURRENCE_TYPES` with a 6 ms delay,
  skips two areas up (V1 -> V4, V2 -> IT), optional feedback two areas down (30 ms),
  supralinear ``Phi(x) = 0.8 sign(x) |x|^1.8``.
* :func:`cornet_rt` -- CORnet-RT as the discrete-time special case ``dt == tau`` with Euler:
  ``r_{n+1} = Phi(u_n)``; each area's block is the population's pipeline
  ``u = relu(GN(conv_in(r_below))) + r_self``, ``Phi(u) = relu(GN(conv(u)))``; the
  connections read the previous step (Euler's one-step lag) and are absent while their
  source is still at its zero initial state (``skip_initial``), so at step 0 only V1 sees
  the image, exactly as in the unrolled model.
* :func:`cordsnet` -- the continuous-time ResNet-like network: eight areas, ``tau = 10`` ms,
  ``dt = 2`` ms, ``r_i`` driven by ``relu(Conv_rec(r_i) + b_i + Conv(r_{i-1}) + Conv(r_{i-2}))``
  with a per-position bias; 100 steps spontaneous, 100 with the image, 100 after.
* :func:`alexnet_like` -- a feed-forward baseline: zero delays, ``dt == tau``, swept with
  ``Euler(order="sequential")`` so one step is one feed-forward pass.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Sequence

from torch import nn

from dynode.errors import ConfigurationError
from dynode.network import Network, RunProtocol
from dynode.solvers import Euler
from dynode.models.adaptation import add_adaptation
from dynode.models.ei import add_inhibition, signed_recurrence
from dynode.models.normalization import add_normalization
from dynode.models.readout import Readout
from dynode.models.recurrence import recurrence

__all__ = ["dyrcnn", "cornet_rt", "cordsnet", "alexnet_like", "DYRCNN_AREAS", "CORTICAL_TIMING", "TIMINGS"]

DYRCNN_AREAS = {
    2: (("V1", 36), ("IT", 256)),
    4: (("V1", 36), ("V2", 64), ("V4", 121), ("IT", 256)),
    8: (("V1a", 36), ("V1b", 36), ("V2a", 64), ("V2b", 64), ("V4a", 121), ("V4b", 121),
        ("ITa", 256), ("ITb", 256)),
}

CORTICAL_TIMING = {
    "input_delay": 48.0,
    "feedforward_delay": (12.0, 20.0, 12.0),
    "skip_delay": (32.0, 32.0),
    "feedback_delay": (32.0, 32.0),
    "tau": (10.0, 15.0, 20.0, 30.0),
}
"""Biological timing of the four-area :func:`dyrcnn` (V1, V2, V4, IT), ``dyrcnn(timing="cortex")``;
ms, every delay a multiple of 4 ms (so of any step 1, 2 or 4 ms):

* ``input_delay`` 48: the retina and the LGN before V1 (the image -> V1 connection). Macaque
  LGN responses start 33 ms (magnocellular) to 50 ms (parvocellular) after a flash, V1 66 ms
  on average, its earliest cells at about 40 ms (Schmolesky et al. 1998, J Neurophysiol
  79:3272); human early visual cortex (ECoG) responds about 60 ms after onset (Groen et al.
  2022 start their DN fits at a 60 ms ``shift``). The input reaches V1 at 48 ms and V1 rises
  to half its peak a few ms to a time constant later.
* ``feedforward_delay`` (12, 20, 12): V1 -> V2, V2 -> V4, V4 -> IT. About 10 ms per stage
  (Nowak & Bullier 1997, in Cerebral Cortex 12: Extrastriate Cortex, "The timing of
  information transfer in the visual system"); V4 starts about 104 ms after onset, 40 ms
  after V1 (Schmolesky et al. 1998), IT about 100 ms (Hung et al. 2005, Science 310:863).
  The input reaches V2 at 60 ms, V4 at 80 ms and IT at 92 ms.
* ``skip_delay`` (32, 32): V1 -> V4 and V2 -> IT, the sum of the two stages each spans, so a
  skip does not make an area respond before the hierarchy's timing.
* ``feedback_delay`` (32, 32): V4 -> V1 and IT -> V2, likewise the two stages each spans
  (feedback and feed-forward axons between V1 and V2 conduct at the same speed, Girard, Hupe &
  Bullier 2001, J Neurophysiol 85:1328).
* ``tau`` (10, 15, 20, 30): time constants that grow up the hierarchy, as intrinsic timescales
  do from sensory to higher areas (Murray et al. 2014, Nat Neurosci 17:1661; Chaudhuri et al.
  2015, Neuron 88:419, whose model has the same ordering from a gradient of recurrent
  strength). The rate equation's tau is the single-unit integration time, not the (longer)
  autocorrelation timescale of a recurrent area those papers measure: the values keep their
  ordering (a factor 3 from V1 to IT) at the 5-30 ms of the reference models.
"""

TIMINGS = {"cortex": CORTICAL_TIMING}
"""Named timings of :func:`dyrcnn` (``timing=``): ``{name: {option: value}}``."""


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _image_shape(input_shape) -> tuple[int, int, int]:
    """``(channels, height, width)`` of one image, each a positive int."""
    try:
        shape = tuple(input_shape)
        ok = len(shape) == 3 and all(float(x) == int(x) and int(x) >= 1 for x in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigurationError(f"input_shape must be (channels, height, width) of one image, e.g. (3, 32, 32), "
                                 f"got {input_shape!r}")
    return tuple(int(x) for x in shape)


def _image_net(input_shape) -> tuple[Network, int, int, int]:
    """A network with the input ``"image"`` of ``input_shape``, and that shape's ``(c, h, w)``."""
    c_in, h, w = _image_shape(input_shape)
    net = Network()
    net.add_input("image", shape=(c_in, h, w))
    return net, c_in, h, w


def _scaled(c: int, width: float, multiple: int = 1) -> int:
    return max(multiple, int(round(c * width / multiple)) * multiple)


def dyrcnn(depth: int = 4, recurrence_type: str = "full", input_shape: Sequence[int] = (3, 32, 32),
           num_classes: int = 100, *, tau: float | Sequence[float] | None = None, dt: float = 2.0,
           steps: int = 20, recurrence_delay: float = 6.0,
           feedforward_delay: float | Sequence[float] | None = None, skip: bool = True,
           skip_delay: float | Sequence[float] | None = None, feedback: bool = False, feedback_delay: float | Sequence[float] | None = None,
           input_delay: float | None = None, timing: str | None = None, phi: str | nn.Module = "supralinear",
           n: float | None = None, k: float | None = None, kernel_size: int = 3, width: float = 1.0,
           readout_at: str = "last", readout_window: tuple[float, float] | None = None,
           recurrence_options: dict | None = None, bias: bool = True, train_tau: bool = False,
           tau_bounds: tuple[float, float] | None = None,
           normalization: bool | str | dict | None = None, adaptation: bool | str | dict | None = None,
           ei: bool | dict | None = None):
    """The continuous-time RCNN of the reference (``depth`` 2, 4 or 8 areas).

    Each area ``i``: ``tau dr_i/dt = -r_i + Phi(Conv_i(r_{i-1}(t - d_ff)) + W_i r_i(t - d_rec)
    [+ A(r_{i-2}(t - d_ff))] [+ F(r_{i+2}(t - d_fb))])`` with ``Conv_i`` a ``k x k`` stride-2
    convolution (stride 1 for the second area of a pair when ``depth == 8``), ``W_i`` the
    recurrence, ``A``/``F`` automatic skip/feedback adapters. Readout: average pool and a
    linear map of the last area (``readout_at``: ``"last"``, ``"mean"``, ``"every"``).
    ``width`` scales the channel counts (for quick tests). Protocol: ``t_end = steps * dt``.
    ``n``, ``k``: exponent and gain of ``phi="supralinear"`` / ``"rectified_power"`` (default
    1.8 and 0.8).

    Timing (ms; every delay must be a multiple of the step the network is run with, which the
    solver checks):

    * ``tau``: one number for every area (default 5) or one per area, bottom up;
    * ``input_delay``: the image -> first area connection (default 0), the retina and thalamus;
      when it is > 0 the protocol shows the image from 0 on (``stimulus_onset = 0``, a pulse that
      does not end), so that the delayed read sees a blank screen before the onset: the first
      area stays exactly at rest until ``input_delay``;
    * ``feedforward_delay``: one number (default 0) or one per area above the first (the
      connection into it from the area below);
    * ``skip_delay``: one number or one per skip connection (``r_i -> r_{i+2}``, bottom up);
      default: the feed-forward delay into its target;
    * ``feedback_delay``: one number (default 30) or one per feedback connection
      (``r_{i+2} -> r_i``, bottom up);
    * ``timing``: a named set of the five above, :data:`TIMINGS` (``"cortex"``:
      :data:`CORTICAL_TIMING`, the macaque/human latencies and time constants that grow up the
      hierarchy, ``depth=4`` only); options given explicitly override the preset's;
    * ``train_tau``: learn each area's ``tau`` (from the values above, inside ``tau_bounds``,
      default half to twice each; as the paper's toolbox's ``train_tau``).

    The reaction window: ``readout_at="mean"`` without ``readout_window`` averages the last
    area over ``[t_react, t_end]``, ``t_react = input_delay + sum(feedforward_delay) +
    tau_last``: the time the image's first effect reaches the last area plus one of its time
    constants to rise (an error when that is not before ``t_end``: more ``steps``).

    Cortex-like dynamics (each area, see :mod:`dynode.models.normalization` and
    :mod:`dynode.models.adaptation`):

    * ``bias``: biases of the feed-forward convolutions (``True`` as published; ``False`` keeps
      a blank input at exactly zero activity);
    * ``normalization``: ``None``/``False`` (off), ``True`` (defaults), a pool kind
      (``"channel"``, ``"space"``, ``"both"``, ``"unit"``) or a dict of
      :func:`~dynode.models.normalization.add_normalization` options, e.g.
      ``{"tau": 30, "delay": 4, "pool": "channel"}``: a pool population ``<area>_norm`` per
      area and ``u = D / (sigma + g)``;
    * ``adaptation``: ``None``/``False``, ``True``, a kind (``"subtractive"``, ``"divisive"``)
      or a dict of :func:`~dynode.models.adaptation.add_adaptation` options: a slow population
      ``<area>_adapt`` per area;
    * ``ei``: ``None``/``False``, ``True`` or a dict of
      :func:`~dynode.models.ei.add_inhibition` options plus ``dale_recurrence`` (default
      ``True``: the recurrence ``W_EE`` becomes nonnegative, :func:`~dynode.models.ei.signed_recurrence`;
      types full, depthwise, pointwise, self): an inhibitory population ``<area>_inh`` per area
      with Dale's law in the local circuit.
    """
    norm_opts, adapt_opts, ei_opts = _components("dyrcnn", normalization, adaptation, ei)
    dale = bool(ei_opts.pop("dale_recurrence", True)) if ei_opts is not None else False
    if dale and recurrence_options and set(recurrence_options) - {"gain"}:
        raise ConfigurationError(f"dyrcnn: with ei (dale_recurrence) the recurrence takes only the option "
                                 f"'gain', got {sorted(recurrence_options)}")
    if depth not in DYRCNN_AREAS:
        raise ConfigurationError(f"dyrcnn depth must be one of {sorted(DYRCNN_AREAS)}, got {depth!r}")
    areas = [(name, _scaled(c, width)) for name, c in DYRCNN_AREAS[depth]]
    taus, d_in, d_ff, d_skip, d_fb = _dyrcnn_timing(len(areas), timing, tau, input_delay, feedforward_delay,
                                                    skip_delay, feedback_delay)
    net, c_in, h, w = _image_net(input_shape)
    if phi in ("supralinear", "rectified_power"):
        phi_params = {"n": 1.8 if n is None else n, "k": 0.8 if k is None else k}
    elif n is not None or k is not None:
        raise ConfigurationError(f"dyrcnn: n and k parametrise the power-law activations; phi={phi!r} "
                                 "takes none (pass a configured module instead)")
    else:
        phi_params = {}
    names = [name for name, _ in areas]
    src, c_prev = "image", c_in
    for i, (name, c) in enumerate(areas):
        stride = 1 if (depth == 8 and i % 2 == 1) else 2
        h, w = _conv_out(h, kernel_size, stride, kernel_size // 2), _conv_out(w, kernel_size, stride, kernel_size // 2)
        net.add_population(name, shape=(c, h, w), tau=taus[i], phi=phi, learn_tau=train_tau,
                           tau_bounds=tau_bounds, **phi_params)
        net.connect(src, name, nn.Conv2d(c_prev, c, kernel_size, stride=stride, padding=kernel_size // 2,
                                         bias=bool(bias)),
                    delay=d_in if i == 0 else d_ff[i - 1])
        rec = (signed_recurrence(recurrence_type, c, kernel_size, sign=1,
                                 gain=float((recurrence_options or {}).get("gain", 0.1))) if dale
               else recurrence(recurrence_type, c, kernel_size, **(recurrence_options or {})))
        net.connect(name, name, rec, delay=recurrence_delay)
        src, c_prev = name, c
    for i in range(len(names) - 2):
        if skip:
            net.connect(names[i], names[i + 2], delay=d_skip[i])
        if feedback:
            net.connect(names[i + 2], names[i], delay=d_fb[i])
    _add_components(net, names, "dyrcnn", norm_opts, adapt_opts, ei_opts)
    last, t_end = names[-1], steps * dt
    if readout_at == "mean" and readout_window is None:
        t_react = d_in + sum(d_ff) + taus[-1]
        if not t_react < t_end:
            raise ConfigurationError(f"dyrcnn: the reaction window starts at {t_react:g} ms (input_delay + "
                                     f"sum(feedforward_delay) + tau of {last}), not before t_end = steps * dt = "
                                     f"{t_end:g} ms; give more steps or a readout_window")
        readout_window = (t_react, t_end)
    net.set_readout(Readout(last, net.shape_of(last), num_classes, at=readout_at, window=readout_window))
    pulse = dict(stimulus_onset=0.0) if d_in > 0 else {}  # no duration: shown until any t_end
    net.protocol = RunProtocol(dt=dt, t_end=t_end, solver="euler", steps=steps, **pulse)
    return net


def _per_area(value, n: int, what: str, whom: str, *, positive: bool) -> list[float]:
    """``value`` (a number or a sequence of ``n``) as ``n`` floats of ms, each finite and > 0
    (``positive``) or >= 0; ``whom`` says what the ``n`` entries are."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ConfigurationError(f"dyrcnn: {what} takes one number (ms) or {n} ({whom}), got {len(values)}: "
                                 f"{value!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or \
                not (v > 0 if positive else v >= 0):
            raise ConfigurationError(f"dyrcnn: {what} must be {'> 0' if positive else '>= 0'} and finite "
                                     f"ms ({whom}), got {value!r}")
        out.append(float(v))
    return out


def _dyrcnn_timing(n: int, timing, tau, input_delay, feedforward_delay, skip_delay, feedback_delay):
    """dyrcnn's ``(taus, input delay, feed-forward, skip and feedback delays)`` for ``n`` areas:
    the named ``timing``'s values (:data:`TIMINGS`) where an option is ``None``, the published
    defaults (5, 0, 0, the feed-forward delay into the target, 30 ms) where there is no timing,
    each checked."""
    preset = {}
    if timing is not None:
        if timing not in TIMINGS:
            raise ConfigurationError(f"dyrcnn: timing={timing!r}; known: {sorted(TIMINGS)} (or None)")
        preset = TIMINGS[timing]
        if n != len(preset["tau"]):
            raise ConfigurationError(f"dyrcnn: timing={timing!r} gives {len(preset['tau'])} areas their timing "
                                     f"(V1, V2, V4, IT); use depth=4, or give tau and the delays per area")
    given = {"tau": tau, "input_delay": input_delay, "feedforward_delay": feedforward_delay,
             "skip_delay": skip_delay, "feedback_delay": feedback_delay}
    defaults = {"tau": 5.0, "input_delay": 0.0, "feedforward_delay": 0.0, "feedback_delay": 30.0}
    v = {k: x if x is not None else preset.get(k, defaults.get(k)) for k, x in given.items()}
    taus = _per_area(v["tau"], n, "tau", "one per area, bottom up", positive=True)
    d_in = _per_area(v["input_delay"], 1, "input_delay", "the image -> first area", positive=False)[0]
    d_ff = _per_area(v["feedforward_delay"], n - 1, "feedforward_delay",
                     "one per area above the first: the connection into it", positive=False)
    d_skip = (d_ff[1:] if v["skip_delay"] is None else
              _per_area(v["skip_delay"], n - 2, "skip_delay", "one per skip connection two areas up, bottom up",
                        positive=False))
    d_fb = _per_area(v["feedback_delay"], n - 2, "feedback_delay",
                     "one per feedback connection two areas down, bottom up", positive=False)
    return taus, d_in, d_ff, d_skip, d_fb


def _component_options(value, what: str, kind_key: str) -> dict | None:
    """``None``/``False`` -> off, ``True`` -> defaults, a string -> ``{kind_key: value}``, a dict
    -> a copy (its keys are checked by the helper that builds the component)."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, str):
        return {kind_key: value}
    if isinstance(value, dict):
        return dict(value)
    raise ConfigurationError(f"{what} must be None/False (off), True (defaults), a string ({kind_key}) "
                             f"or a dict of options, got {type(value).__name__}")


def _components(model: str, normalization, adaptation, ei) -> tuple[dict | None, dict | None, dict | None]:
    """The options of the three components of ``model`` (see :func:`_component_options`)."""
    norm_opts = _component_options(normalization, "normalization", "pool")
    adapt_opts = _component_options(adaptation, "adaptation", "kind")
    if isinstance(ei, str):
        raise ConfigurationError(f"{model}: ei takes None/False, True or a dict of options, got the string {ei!r}")
    return norm_opts, adapt_opts, _component_options(ei, "ei", "")


def _no_components(model: str, components: dict, why: str) -> None:
    """Reject the component options (and any other unknown keyword) of a model without them."""
    given = sorted(k for k, v in components.items()
                   if (k == "bias" and v is not True) or (k in ("normalization", "adaptation", "ei")
                                                          and v is not None and v is not False))
    unknown = sorted(k for k in components if k not in ("normalization", "adaptation", "ei", "bias"))
    if unknown:
        raise ConfigurationError(f"{model}: unknown options {unknown}")
    if given:
        raise ConfigurationError(f"{model} does not support {given}: {why}")


def _add_components(net, areas: Sequence[str], model: str, norm_opts: dict | None,
                    adapt_opts: dict | None, ei_opts: dict | None = None) -> None:
    """Add inhibitory, normalization and adaptation populations to each of ``areas`` (errors
    name the model and the option)."""
    for what, opts, add in (("ei", ei_opts, add_inhibition),
                            ("normalization", norm_opts, add_normalization),
                            ("adaptation", adapt_opts, add_adaptation)):
        if opts is None:
            continue
        allowed = [p for p in inspect.signature(add).parameters if p not in ("net", "area", "name")]
        unknown = sorted(set(opts) - set(allowed))
        if unknown:
            raise ConfigurationError(f"{model}: unknown {what} options {unknown}; allowed: {allowed}")
        for area in areas:
            try:
                add(net, area, **opts)
            except ConfigurationError as exc:
                raise type(exc)(f"{model}: {what}={opts!r}: {exc}") from None


def _cornet_stage(c_in: int, c_out: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2),
                         nn.GroupNorm(32, c_out), nn.ReLU())


def cornet_rt(num_classes: int = 1000, times: int = 5, *, input_shape: Sequence[int] = (3, 224, 224),
              dt: float = 10.0, width: float = 1.0, **components):
    """CORnet-RT (V1, V2, V4, IT with 64, 128, 256, 512 channels) as a dynode network.

    Area ``A`` with the area below ``B`` (the image for V1), ``dt == tau`` and Euler::

        r_A[n+1] = relu(GN(conv(relu(GN(conv_in(r_B[n]))) + r_A[n])))

    where a term whose source is still at its (zero) initial state is absent (at ``n = 0``
    the upper areas get no input, V1 gets the image). The image is presented at every step;
    the readout decodes IT after ``times`` steps (average pool, linear). ``width`` scales the
    channels (kept multiples of 32 for GroupNorm(32)).

    ``normalization``, ``adaptation``, ``ei`` and ``bias=False`` are not offered (a discrete-time RNN whose step
    is one Euler step of ``dt == tau``: a pool with its own ``tau`` has no meaning here).
    """
    _no_components("cornet_rt", components, "it is the discrete-time special case dt == tau, "
                   "where pool populations with their own tau have no meaning; use dyrcnn or cordsnet")
    if times < 1:
        raise ConfigurationError(f"cornet_rt times must be >= 1, got {times}")
    net, c_in, h, w = _image_net(input_shape)
    spec = (("V1", 64, 7, 4), ("V2", 128, 3, 2), ("V4", 256, 3, 2), ("IT", 512, 3, 2))
    src, c_prev = "image", c_in
    for name, c, k, s in spec:
        c = _scaled(c, width, 32)
        h, w = _conv_out(h, k, s, k // 2), _conv_out(w, k, s, k // 2)
        net.add_population(name, shape=(c, h, w), tau=float(dt),
                           pipeline=["sum", nn.Conv2d(c, c, 3, padding=1, bias=False),
                                     nn.GroupNorm(32, c), nn.ReLU()])
        net.connect(src, name, _cornet_stage(c_prev, c, k, s), skip_initial=src != "image")
        net.connect(name, name, None, skip_initial=True)
        src, c_prev = name, c
    net.set_readout(Readout("IT", net.shape_of("IT"), num_classes, at="last"))
    net.protocol = RunProtocol(dt=dt, t_end=times * dt, solver="euler", steps=times)
    return net


def cordsnet(num_classes: int = 100, *, input_shape: Sequence[int] = (3, 32, 32),
             channels: Sequence[int] = (64, 64, 128, 128, 256, 256, 512, 512), tau: float = 10.0,
             dt: float = 2.0, spontaneous_steps: int = 100, stimulus_steps: int = 100,
             after_steps: int = 100, width: float = 1.0, rec_gain: float = 0.1, bias: bool = True,
             normalization: bool | str | dict | None = None, adaptation: bool | str | dict | None = None,
             ei: bool | dict | None = None):
    """CordsNet: ``tau dr_i/dt = -r_i + relu(W_i r_i + b_i + C_i r_{i-1} + S_i r_{i-2})``.

    Eight areas (``channels``), ``3 x 3`` recurrent (``full``) and inter-area convolutions;
    the channel count doubles with a stride-2 convolution (ResNet-like); ``S_i`` is the skip
    from two areas below (a stride-matched ``3 x 3`` convolution); ``b_i`` a per-position
    bias. Protocol (``dt / tau = 0.2``): the image is on from ``spontaneous_steps * dt`` for
    ``stimulus_steps * dt``, then off for ``after_steps * dt``. Readout: the mean of the last
    area over the second half of the stimulus window.

    ``bias=False`` drops ``b_i`` and the convolutions' biases; ``normalization``, ``adaptation``
    and ``ei`` add those components to every area as in :func:`dyrcnn` (``ei`` keeps the
    recurrence ``W_i`` unconstrained: CordsNet's published weights have both signs).
    """
    norm_opts, adapt_opts, ei_opts = _components("cordsnet", normalization, adaptation, ei)
    if ei_opts is not None and "dale_recurrence" in ei_opts:
        raise ConfigurationError("cordsnet: ei has no dale_recurrence option (CordsNet's recurrence is "
                                 "unconstrained); use dyrcnn(ei={'dale_recurrence': True}) for that")
    net, c_in, h, w = _image_net(input_shape)
    chans = [_scaled(c, width) for c in channels]
    names = [f"A{i + 1}" for i in range(len(chans))]
    shapes = []
    for i, (name, c) in enumerate(zip(names, chans)):
        c_prev = c_in if i == 0 else chans[i - 1]
        stride = 1 if i == 0 or c == c_prev else 2
        h, w = _conv_out(h, 3, stride, 1), _conv_out(w, 3, stride, 1)
        shapes.append((c, h, w))
        net.add_population(name, shape=(c, h, w), tau=tau, phi="relu", bias="unit" if bias else False)
        net.connect("image" if i == 0 else names[i - 1], name,
                    nn.Conv2d(c_prev, c, 3, stride=stride, padding=1, bias=bool(bias)))
        net.connect(name, name, recurrence("full", c, 3, gain=rec_gain))
        if i >= 2:
            cs, hs, _ = shapes[i - 2]
            s2 = hs // h
            if s2 not in (1, 2) or _conv_out(hs, 3, s2, 1) != h:
                raise ConfigurationError(f"cordsnet: cannot build the skip {names[i - 2]} -> {name} "
                                         f"({shapes[i - 2]} -> {(c, h, w)}); use an input size divisible by 8")
            net.connect(names[i - 2], name, nn.Conv2d(cs, c, 3, stride=s2, padding=1, bias=False))
    _add_components(net, names, "cordsnet", norm_opts, adapt_opts, ei_opts)
    onset, off = spontaneous_steps * dt, (spontaneous_steps + stimulus_steps) * dt
    net.set_readout(Readout(names[-1], shapes[-1], num_classes, at="mean",
                            window=(onset + 0.5 * stimulus_steps * dt, off)))
    net.protocol = RunProtocol(dt=dt, t_end=off + after_steps * dt, solver="euler",
                               stimulus_onset=onset, stimulus_duration=off - onset,
                               steps=spontaneous_steps + stimulus_steps + after_steps)
    return net


def alexnet_like(num_classes: int = 10, *, input_shape: Sequence[int] = (3, 32, 32), width: float = 1.0,
                 dt: float = 1.0, **components):
    """A feed-forward AlexNet-style baseline (five conv areas; max-pooling in the pipelines of
    conv1, conv2 and conv5), zero delays, ``tau == dt``, one step of
    ``Euler(order="sequential")`` = one feed-forward pass: ``r_i[1] = Phi_i(conv_i(r_{i-1}[1]))``.
    ``normalization``, ``adaptation``, ``ei`` and ``bias=False`` are not offered (one
    feed-forward pass has no dynamics for them to shape).
    """
    _no_components("alexnet_like", components, "it is a feed-forward baseline (one pass, no "
                   "dynamics); use dyrcnn or cordsnet")
    net, c_in, h, w = _image_net(input_shape)
    spec = (("conv1", 64, 5, True), ("conv2", 192, 5, True), ("conv3", 384, 3, False),
            ("conv4", 256, 3, False), ("conv5", 256, 3, True))
    src, c_prev = "image", c_in
    for name, c, k, pool in spec:
        c = _scaled(c, width)
        stages = ["relu"] + ([nn.MaxPool2d(2)] if pool else [])
        if pool:
            h, w = h // 2, w // 2
        net.add_population(name, shape=(c, h, w), tau=float(dt), pipeline=stages)
        net.connect(src, name, nn.Conv2d(c_prev, c, k, padding=k // 2))
        src, c_prev = name, c
    net.set_readout(Readout(src, net.shape_of(src), num_classes, at="last"))
    net.protocol = RunProtocol(dt=dt, t_end=dt, solver=Euler(order="sequential"), steps=1)
    return net


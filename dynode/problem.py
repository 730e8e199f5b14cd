"""An initial-value problem, validated once before any step runs.

:func:`make_problem` turns what the user passed to ``integrate`` (a field, a stimulus in one
of its accepted forms, times, an initial state) into a :class:`Problem` whose parts the
solvers use as they are: a bound input function ``t -> {input_name: batched tensor}``,
the breakpoints, the initial state on the right device and dtype, and the save times.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dynode.brownian import noise_coefficients, sample_keys
from dynode.errors import ConfigurationError, ShapeError
from dynode.events import Event, check_events
from dynode.field import VectorField
from dynode.guards import magnitudes
from dynode.solution import Solution
from dynode.stimulus import Stimulus, as_stimulus
from dynode.tolerances import TIME_RTOL, time_tol

if TYPE_CHECKING:  # pragma: no cover
    from dynode.history import HistoryTail

__all__ = ["Problem", "make_problem", "as_ms"]


@dataclass(frozen=True)
class Problem:
    field: VectorField
    inputs: Callable[[float], dict[str, Tensor]]
    breakpoints: tuple[float, ...]
    y0: dict[str, Tensor]
    t0: float
    t_end: float
    save_at: tuple[float, ...] | None  # None: t0 and the end of every step (see Output)
    batch_size: int
    max_abs: float | None
    check_every: int
    checkpoint: int | bool | None = None  # gradient checkpointing segment (steps); fixed-step only
    tail: HistoryTail | None = None  # the delayed past of a continued run (fixed-step only)
    dense: bool = False  # keep the solver's interpolant on every step (Solution.evaluate)
    noise: Mapping[str, float | Tensor] | None = None  # g per noisy population (dr = f dt + g dW)
    seeds: Tensor | None = None  # the per-sample Brownian path keys (int64, (batch,)) of a noisy run
    events: Mapping[str, Event] | None = None  # zero crossings watched per sample (dynode.events)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.y0)


def as_ms(value, name: str) -> float:
    """``value`` as a time in ms: a real number (a Python or numpy number, or a 0-dim tensor),
    not a bool or a string. Finiteness and range are the caller's to check."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigurationError(f"{name} must be a number of ms, got {value!r}")
    return float(value)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` as ``'float32'``, for messages."""
    return str(dtype).replace("torch.", "")


def _is_count(value) -> bool:
    """A positive int (a bool is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


LOW_PRECISION = (torch.bfloat16, torch.float16)


def _low_precision_state(initial_state) -> torch.dtype | None:
    """The initial state's dtype if it is bfloat16 or float16 (all its tensors alike), else None."""
    dtypes = {v.dtype for v in (initial_state or {}).values()
              if isinstance(v, Tensor) and v.is_floating_point()}
    low = dtypes & set(LOW_PRECISION)
    if not low:
        return None
    if len(dtypes) > 1:
        found = ", ".join(sorted(dtype_name(d) for d in dtypes))
        raise ConfigurationError(f"initial_state mixes dtypes ({found}); give every population's state "
                                 "one dtype (the run's state dtype)")
    return next(iter(low))


def _infer_device_dtype(field: VectorField, initial_state) -> tuple[torch.device, torch.dtype]:
    """The device and the state dtype of the run.

    Both are the field's parameters' (which must share one dtype and device and hold values),
    and another initial state is converted to them (a float64 state on a float32 model runs in
    float32), except for a **low-precision state**: a bfloat16 or float16 initial state, given
    inside ``torch.autocast`` of that dtype on the parameters' device type, makes the run's
    state dtype that dtype. The stimulus is then cast to it, and the history and the solver's
    stages are kept in it, while the parameters keep their dtype (autocast casts the
    operators' inputs); this is what ``prepare_for_speed(..., low_precision_states=True)``
    relies on. Outside such an autocast region a low-precision state on a model of another
    dtype is refused (the operators would mix dtypes): convert the model, run under autocast
    or give states of the model's dtype. Without floating parameters: the initial state's
    device and dtype, else the CPU and torch's default dtype."""
    kinds: dict[tuple[torch.device, torch.dtype], str] = {}
    for name, t in field.named_parameters():
        if t.device.type == "meta":
            raise ConfigurationError(
                f"parameter {name!r} is on the meta device (a placeholder without values); create the "
                "model on a real device, or call .to_empty(device='cpu') and load its weights first")
        if t.is_floating_point():
            kinds.setdefault((t.device, t.dtype), name)
    for name, t in field.named_buffers():
        if t.device.type == "meta":
            raise ConfigurationError(f"buffer {name!r} is on the meta device (a placeholder without "
                                     "values); create the model on a real device")
    if len(kinds) > 1:
        found = "; ".join(f"{name!r} is {dtype_name(dt)} on {dev}"
                          for (dev, dt), name in kinds.items())
        raise ConfigurationError(f"the field's parameters do not share one dtype and device ({found}); "
                                 "convert the whole model once, e.g. net.to(torch.float32) or net.to('cuda')")
    if kinds:
        device, dtype = next(iter(kinds))
        low = _low_precision_state(initial_state)
        if low is None or low == dtype:
            return device, dtype
        if torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == low:
            return device, low
        active = (f"autocast runs in {dtype_name(torch.get_autocast_dtype(device.type))}"
                  if torch.is_autocast_enabled(device.type) else f"no {device.type} autocast is active")
        raise ConfigurationError(
            f"initial_state is {dtype_name(low)} but the model's parameters are {dtype_name(dtype)} and "
            f"{active}; low-precision states run inside torch.autocast('{device.type}', "
            f"dtype=torch.{dtype_name(low)}) (e.g. prepare_for_speed(model, autocast=torch."
            f"{dtype_name(low)}, low_precision_states=True)), or convert the model "
            f"(net.to(torch.{dtype_name(low)})), or give {dtype_name(dtype)} states")
    if initial_state:
        v = next(iter(initial_state.values()))
        if isinstance(v, Tensor):
            if v.device.type == "meta":
                raise ConfigurationError("initial_state is on the meta device (no values); give real tensors")
            return v.device, v.dtype if v.is_floating_point() else torch.get_default_dtype()
    return torch.device("cpu"), torch.get_default_dtype()


def _check_values(field: VectorField, inputs, times: Sequence[float], y0: Mapping[str, Tensor],
                  device: torch.device, dtype: torch.dtype) -> None:
    """Before the first step: every input the stimulus gives at ``times`` (t0 and its first
    breakpoints) has the run's dtype and device, and the inputs, the initial state and the
    field's parameters are finite. One host read for all the finiteness checks."""
    finite: list[tuple[str, Tensor]] = []  # (the error if not all finite, the values)
    for t in times:
        for name, v in inputs(t).items():
            if not isinstance(v, Tensor):
                raise ConfigurationError(f"stimulus input {name!r} at t = {t:g} ms is a {type(v).__name__}, "
                                         "not a tensor")
            if v.device.type == "meta":
                raise ConfigurationError(f"stimulus input {name!r} is on the meta device (no values); "
                                         "give it real tensors")
            if v.dtype != dtype or v.device != device:
                raise ConfigurationError(
                    f"stimulus input {name!r} at t = {t:g} ms is {dtype_name(v.dtype)} on "
                    f"{v.device}, but the model runs in {dtype_name(dtype)} on {device}; give "
                    f"the stimulus floating tensors (e.g. images.to({dtype}))"
                    " or convert the model (net.to(...))")
            finite.append(((f"stimulus input {name!r} has NaN or inf values at t = {t:g} ms; clean the "
                            "images or stimulus values (e.g. torch.nan_to_num) before the run"), v))
    finite += [(f"initial_state[{name!r}] has NaN or inf values; give finite rates", v)
               for name, v in y0.items()]
    finite += [((f"parameter {name!r} of the field has NaN or inf values (damaged weights, e.g. from a "
                 "diverged training step); load other weights or re-initialise the model"), p)
               for name, p in field.named_parameters() if p.is_floating_point()]
    # y0 is never empty (make_problem refuses an empty init_state); all on the run's device
    ok = torch.isfinite(magnitudes(v for _, v in finite)).tolist()
    for good, (message, _) in zip(ok, finite):
        if not good:
            raise ConfigurationError(message)


_CHECKED_BREAKPOINTS = 64  # stimulus values checked at t0 and at up to this many breakpoints


def _bind_stimulus(stimulus: Stimulus | None, field: VectorField, t0: float, batch_size: int | None,
                   device, dtype) -> tuple[Callable[[float], dict[str, Tensor]], int | None]:
    names = tuple(field.input_names())
    shapes = field.input_shapes() if hasattr(field, "input_shapes") else {}
    if stimulus is None:
        if names:
            raise ConfigurationError(f"the field reads the inputs {list(names)} but no stimulus was "
                                     "given; pass stimulus=... (a Stimulus, a tensor or a dict)")
        return (lambda t: {}), batch_size
    try:
        stimulus = stimulus.to(device=device, dtype=dtype)
    except (NotImplementedError, RuntimeError, TypeError) as exc:  # meta tensors, an absent device, no to()
        raise ConfigurationError(f"the stimulus cannot be moved to the model's device and dtype ({device}, "
                                 f"{dtype_name(dtype)}): {str(exc).splitlines()[0]}; give "
                                 "it tensors with values (not on the meta device), or implement "
                                 f"{type(stimulus).__name__}.to(device, dtype)") from None
    first = stimulus(t0)
    only = None  # the input's name when the stimulus gives one unnamed tensor
    if isinstance(first, Tensor):
        if len(names) != 1:
            raise ConfigurationError(
                f"the stimulus gives one unnamed tensor but the field has {len(names)} inputs "
                f"{list(names)}; give a dict {{input_name: tensor}} instead" if names else
                "the stimulus gives one unnamed tensor but the field declares no inputs "
                "(a custom VectorField declares them with input_names())")
        only = names[0]
        first = {only: first}
    elif isinstance(first, Mapping):
        if names:
            missing = [n for n in names if n not in first]
            extra = [n for n in first if n not in names]
            if missing or extra:
                raise ConfigurationError(f"stimulus inputs {sorted(first)} do not match the field's "
                                         f"inputs {list(names)} (missing {missing}, unknown {extra})")
    else:
        raise ConfigurationError(f"the stimulus returned {type(first).__name__}; it must return a "
                                 "tensor or a dict of tensors")
    expand: dict[str, tuple[int, ...]] = {}
    batch = batch_size
    for name, value in first.items():
        shape = shapes.get(name)
        if shape is None:  # custom field: trust the given shape, batch first
            vb = value.shape[0] if value.dim() > 0 else None
        elif tuple(value.shape) == tuple(shape):
            expand[name] = tuple(shape)
            vb = None
        elif tuple(value.shape[1:]) == tuple(shape):
            vb = value.shape[0]
        else:
            raise ShapeError(f"input {name!r}: the stimulus has shape {tuple(value.shape)} but the "
                             f"input is declared (batch, *{tuple(shape)})")
        if vb is not None:
            if batch is not None and batch != vb:
                raise ShapeError(f"input {name!r}: the stimulus has batch {vb} but the batch size is "
                                 f"{batch} (from batch_size, the initial state or another input)")
            batch = vb
    b = batch if batch is not None else 1

    if only is None and not expand:
        return stimulus, batch
    if not expand:
        return (lambda t: {only: stimulus(t)}), batch

    def bound(t: float) -> dict[str, Tensor]:
        v = stimulus(t)
        v = {only: v} if only is not None else dict(v)
        for name, shape in expand.items():
            v[name] = v[name].expand(b, *shape)
        return v
    return bound, batch


def make_problem(field, stimulus, *, t0: float, t_end: float, save_at, initial_state, batch_size,
                 max_abs, check_every, checkpoint: int | bool | None = None, dense: bool = False,
                 check_state: Callable[[int, torch.device, torch.dtype], None] | None = None,
                 noise: Mapping[str, float | Tensor] | None = None, seed=None,
                 events: Mapping[str, Event] | None = None) -> Problem:
    """The validated :class:`Problem`. ``check_state(batch, device, dtype)``, if given, runs once
    the batch, device and dtype are known and before ``field.init_state`` allocates the state
    (e.g. :func:`dynode.integrate`'s memory check).

    ``noise``: ``{population: g}`` of the noisy populations (default: the field's,
    :func:`dynode.brownian.noise_coefficients`);
    ``seed``: see :func:`dynode.integrate`. A noisy run always gets per-sample path keys
    (``Problem.seeds``): from ``seed``, else from the continued solution's ``seeds``, else from
    one seed drawn from torch's global generator (so ``torch.manual_seed`` fixes it too); the
    keys are recorded in ``Solution.seeds`` for a replay. A ``seed`` without noise is refused.
    ``events``: ``{name: Event}`` (:func:`dynode.events.as_events`), each ``g`` checked on the
    initial state (shape ``(batch,)``, finite)."""
    if not isinstance(field, VectorField):
        raise ConfigurationError(f"field must be a dynode.VectorField (e.g. a dn.Network), got "
                                 f"{type(field).__name__}")
    t0, t_end = as_ms(t0, "t0"), as_ms(t_end, "t_end")
    if not (math.isfinite(t0) and math.isfinite(t_end)):
        raise ConfigurationError(f"t0 and t_end must be finite (ms), got t0={t0}, t_end={t_end}")
    if not t_end > t0:
        raise ConfigurationError(f"t_end ({t_end} ms) must be greater than t0 ({t0} ms)")
    if batch_size is not None and not _is_count(batch_size):
        raise ConfigurationError(f"batch_size must be a positive int, got {batch_size!r}")
    if max_abs is not None and (isinstance(max_abs, bool) or not isinstance(max_abs, (int, float))
                                or not max_abs > 0):
        raise ConfigurationError(f"max_abs must be > 0 (or None to disable the blow-up check), got {max_abs}")
    if not _is_count(check_every):
        raise ConfigurationError(f"check_every must be a positive int (steps), got {check_every!r}")
    if checkpoint is not None and not isinstance(checkpoint, bool) and not _is_count(checkpoint):
        raise ConfigurationError(f"checkpoint must be None, True (segments of sqrt(steps)) or a "
                                 f"positive number of steps per segment, got {checkpoint!r}")
    if not isinstance(dense, bool):
        raise ConfigurationError(f"dense must be True or False, got {dense!r}")
    tail, seeds = None, None
    noise = noise_coefficients(field) if noise is None else noise
    if seed is not None and not noise:
        raise ConfigurationError("seed= fixes the Brownian paths of the noise, but no population of the field "
                                 "is noisy (add_population(..., noise=sigma)); drop seed=")
    if isinstance(initial_state, Solution):
        tail, seeds = initial_state.tail, initial_state.seeds
        if tail is None:
            raise ConfigurationError("this solution cannot be continued exactly (its solver keeps no "
                                     "delayed history); pass solution.final_state to restart from "
                                     "its last state with constant history")
        t_last = float(initial_state.ts[-1]) if len(initial_state.ts) else None
        if t_last is not None and abs(t_last - t0) > time_tol(t0):
            raise ConfigurationError(f"initial_state is a solution that ends at t = {t_last:g} ms, but "
                                     f"t0 = {t0:g} ms: a continuation starts where the run ended (pass "
                                     f"t0={t_last:g}), or pass solution.final_state to restart from its "
                                     "last state with constant history")
        initial_state = initial_state.final_state
    if initial_state is not None and not isinstance(initial_state, Mapping):
        raise ConfigurationError(f"initial_state must be None, a dict {{population: tensor}} or a Solution to "
                                 f"continue, got {type(initial_state).__name__}")
    device, dtype = _infer_device_dtype(field, initial_state)
    stim = as_stimulus(stimulus)
    inputs, batch = _bind_stimulus(stim, field, t0, batch_size, device, dtype)
    batched = {n: v for n, v in (initial_state or {}).items() if isinstance(v, Tensor) and v.dim() > 0}
    if batched and batch is None:  # the first entry that is not one sample's shape sets the batch
        default = field.init_state(1, device="meta")
        batch = next((v.shape[0] for n, v in batched.items()
                      if n in default and tuple(v.shape) != tuple(default[n].shape[1:])), None)
    b = batch if batch is not None else 1
    if check_state is not None:
        check_state(b, device, dtype)
    seeds = _path_keys(seed, seeds, b, device) if noise else None
    y0 = field.init_state(b, device=device, dtype=dtype)
    if not isinstance(y0, Mapping) or not y0:
        raise ConfigurationError(f"{type(field).__name__}.init_state must return a non-empty dict "
                                 "{population: tensor}")
    y0 = dict(y0)
    if initial_state:
        unknown = [n for n in initial_state if n not in y0]
        if unknown:
            raise ConfigurationError(f"initial_state has unknown populations {unknown}; "
                                     f"the field's populations are {list(y0)}")
        for name, v in initial_state.items():
            try:
                v = torch.as_tensor(v, device=device, dtype=dtype)
            except (TypeError, ValueError, RuntimeError, NotImplementedError) as exc:
                raise ConfigurationError(f"initial_state[{name!r}] is not a tensor of rates ({type(v).__name__}: "
                                         f"{str(exc).splitlines()[0]}); give a tensor or a number") from None
            target = y0[name].shape
            if tuple(v.shape) == tuple(target):
                y0[name] = v
            elif tuple(v.shape) == tuple(target[1:]) or v.dim() == 0:
                y0[name] = v.expand(target).clone()
            else:
                raise ShapeError(f"initial_state[{name!r}] has shape {tuple(v.shape)}; expected "
                                 f"{tuple(target)} or {tuple(target[1:])}")
    bps = tuple(sorted({float(x) for x in (stim.breakpoints if stim is not None else ())}))
    if save_at is not None:
        if isinstance(save_at, (int, float)):
            every = float(save_at)
            if not (every > 0 and math.isfinite(every)):
                raise ConfigurationError(f"save_at as a number is the saving interval in ms and must "
                                         f"be > 0, got {every}")
            n = math.floor((t_end - t0) / every + TIME_RTOL)
            save_at = tuple(t0 + i * every for i in range(n + 1))
        else:
            if isinstance(save_at, (str, bytes)) or not isinstance(save_at, (Sequence, Tensor)):
                raise ConfigurationError(f"save_at must be None, an interval in ms or a sequence of times in "
                                         f"ms, got {type(save_at).__name__}")
            save_at = tuple(as_ms(s, "save_at") for s in (save_at.tolist() if isinstance(save_at, Tensor) else save_at))
            if not save_at:
                raise ConfigurationError("save_at is empty; give at least one time in ms")
            bad = [x for x in save_at if not math.isfinite(x)]
            if bad:
                raise ConfigurationError(f"save_at holds {bad[0]} among its times; every save time must be a "
                                         "finite time in ms within [t0, t_end]")
            if any(b <= a for a, b in zip(save_at, save_at[1:])):
                raise ConfigurationError("save_at must be strictly increasing (ms)")
            if save_at[0] < t0 - TIME_RTOL or save_at[-1] > t_end + TIME_RTOL:
                raise ConfigurationError(f"save_at must lie within [t0, t_end] = [{t0}, {t_end}] ms, got "
                                         f"[{save_at[0]}, {save_at[-1]}]")
    checked = (t0,) + tuple(x for x in bps if t0 < x < t_end)[:_CHECKED_BREAKPOINTS]
    _check_values(field, inputs, checked, y0, device, dtype)
    if events:
        check_events(events, t0, y0)
    return Problem(field=field, inputs=inputs, breakpoints=bps, y0=y0, t0=t0, t_end=t_end,
                   save_at=save_at, batch_size=b, max_abs=max_abs, check_every=check_every,
                   checkpoint=checkpoint, tail=tail, dense=dense, noise=dict(noise) if noise else None,
                   seeds=seeds, events=dict(events) if events else None)


def _path_keys(seed, continued: Tensor | None, batch: int, device) -> Tensor:
    """The per-sample keys of a noisy run (see :func:`make_problem`)."""
    if seed is None and continued is not None:
        if continued.shape[0] != batch:
            raise ConfigurationError(f"the continued solution's noise has {continued.shape[0]} per-sample keys "
                                     f"but the batch has {batch} samples; pass seed= explicitly")
        return continued.to(device)
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, (), dtype=torch.int64))  # recorded in Solution.seeds
    return sample_keys(seed, batch, device)

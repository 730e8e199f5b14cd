"""Speed options for conv networks: channels-last memory, ``torch.compile``, bf16 autocast.

:func:`prepare_for_speed` switches them on for a :class:`~dynode.models.Classifier` (or a
bare :class:`dynode.Network`) in place and records them in ``model.speed``:

* ``channels_last``: 4-D weights and the network's states (``Network.memory_format``) use
  NHWC, which the CPU (oneDNN) and GPU (cuDNN) convolutions prefer; the classifier converts
  the images too.
* ``compile``: every connection operator and every population's ``Phi`` stage is compiled
  in place (``nn.Module.compile``, so ``state_dict`` keys do not change); dynamo's
  ``recompile_limit`` is raised to the number of compiled modules (instances of one class
  share a code object). On the 2-core CPU compiling CORnet-RT took minutes and ran slower.
* ``autocast``: ``torch.bfloat16`` (or ``torch.float16`` on CUDA) runs the operators in that
  dtype under ``torch.autocast``; each population's drive is cast back to the state dtype, so
  the Euler update ``r + dt/tau (Phi(u) - r)`` and the states stay in float32. The classifier
  enters the autocast region itself; for a bare network use ``model.speed.autocast_context``.
* ``low_precision_states``: the states themselves are in the autocast dtype. The classifier
  starts from zero states of that dtype; :func:`dynode.integrate` then runs in it end to end
  (the image cast to it, the history, the solver's stages and the saved states in it) while
  the parameters stay float32 (see ``dynode.problem._infer_device_dtype``). For a bare
  network pass ``initial_state=net.init_state(batch, dtype=model.speed.state_dtype)`` inside
  ``model.speed.autocast_context()``; outside autocast such a state is refused.

The options change speed, not the model: the tests compare outputs with and without them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from dynode.errors import ConfigurationError

__all__ = ["SpeedOptions", "prepare_for_speed"]


@dataclass(frozen=True)
class SpeedOptions:
    channels_last: bool = False
    compile: bool = False
    autocast: torch.dtype | None = None
    device_type: str = "cpu"
    state_dtype: torch.dtype | None = None  # the run's state dtype; None: the parameters'

    def autocast_context(self):
        """The autocast region for these options (a no-op context when autocast is off)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast)


def _cast_hook(dtype: torch.dtype):
    def hook(module, args, output):
        return output.to(dtype) if output.dtype != dtype else output
    return hook


def prepare_for_speed(model: nn.Module, *, channels_last: bool = True, compile: bool = False,
                      autocast: torch.dtype | None = None, low_precision_states: bool = False,
                      compile_options: dict | None = None) -> nn.Module:
    """Switch on the speed options for ``model`` (a Classifier or a Network), in place.

    ``low_precision_states=True`` (with ``autocast``) keeps the states themselves in the
    autocast dtype, as a plain autocast loop does; exact in meaning for ``dt == tau``
    (``r_{n+1} = Phi(u_n)``, e.g. CORnet-RT), but it rounds the Euler update
    ``r + dt/tau (Phi(u) - r)`` to bf16 otherwise. The Classifier then starts from zero
    states of that dtype, which makes the whole run's state dtype bf16 (image, history,
    solver state; the parameters stay float32).
    """
    net = getattr(model, "network", model)
    if not hasattr(net, "populations"):
        raise ConfigurationError("prepare_for_speed needs a dynode.Network or a Classifier wrapping one")
    if getattr(model, "speed", None) is not None and model.speed != SpeedOptions():
        raise ConfigurationError("prepare_for_speed was already applied to this model; build a fresh one")
    p = next(net.parameters(), None)
    device_type = p.device.type if p is not None else "cpu"
    state_dtype = p.dtype if p is not None else torch.get_default_dtype()
    if autocast is not None:
        if autocast not in (torch.bfloat16, torch.float16):
            raise ConfigurationError(f"autocast must be torch.bfloat16 or torch.float16, got {autocast}")
        if autocast == torch.float16 and device_type != "cuda":
            raise ConfigurationError("float16 autocast is for CUDA devices; use torch.bfloat16 on the CPU")
        if low_precision_states:
            state_dtype = autocast
        for pop in net.populations.values():
            pop.phi.register_forward_hook(_cast_hook(state_dtype))
    elif low_precision_states:
        raise ConfigurationError("low_precision_states=True needs autocast=torch.bfloat16 (or float16)")
    if channels_last:
        net.to(memory_format=torch.channels_last)
        net.memory_format = torch.channels_last
    if compile:
        opts = dict(compile_options or {})
        targets = [op for pop in net.populations.values() for op in pop.incoming.values()
                   if not isinstance(op, nn.Identity)] + [pop.phi for pop in net.populations.values()]
        # modules of one class share a code object, which dynamo recompiles per instance: let
        # it keep one entry per compiled module instead of falling back to eager after 8
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, len(targets) + 8)
        for m in targets:
            m.compile(**opts)
    model.speed = SpeedOptions(channels_last=channels_last, compile=compile, autocast=autocast,
                               device_type=device_type,
                               state_dtype=autocast if low_precision_states else None)
    return model

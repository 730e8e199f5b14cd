"""Time-dependent stimuli (deterministic in ``t``, with breakpoints in ms)."""

from dynode.stimuli.base import Constant, Pulse, Stimulus, StimulusValue, as_stimulus

__all__ = ["Constant", "Pulse", "Stimulus", "StimulusValue", "as_stimulus"]

"""Time-dependent stimuli (deterministic in ``t``, with breakpoints in ms)."""

from dynode.stimulus import Constant, Pulse, Stimulus, StimulusValue, as_stimulus
from dynode.stimuli import envelopes  # noqa: E402
from dynode.stimuli.envelopes import Envelope
from dynode.stimuli.compose import BACKGROUND, Modulated, Succession, Sum, resolve_background, scale_contrast
from dynode.stimuli.noise import NOISE_KINDS, DynamicNoise, add_noise, noise_field, signal_power, snr_of
from dynode.stimuli.generated import (
    ImageTask, checkerboard, gabor, generated_task, grating, pink_noise,
)
from dynode.stimuli.protocols import (
    EXPERIMENTS, GROEN2022, REACTION_TIME, Experiment, Protocol, contrast_series, duration_series, groen2022,
    interval_series, reaction_time_series,
)
from dynode.stimuli.protocols import present
from dynode.stimuli import datasets  # noqa: E402
from dynode.stimuli.datasets import (
    STATS, DatasetNotFoundError, InMemoryLoader, dataset, in_memory, load_tensors,
)

__all__ = ["Constant", "Pulse", "Stimulus", "StimulusValue", "as_stimulus"]
__all__ += [
    "envelopes", "Envelope", "BACKGROUND", "Modulated", "Succession", "Sum", "resolve_background", "scale_contrast",
    "NOISE_KINDS", "DynamicNoise", "add_noise", "noise_field", "signal_power", "snr_of",
    "ImageTask", "checkerboard", "gabor", "generated_task", "grating", "pink_noise",
    "present", "GROEN2022", "EXPERIMENTS", "Experiment", "Protocol", "contrast_series", "duration_series", "groen2022", "interval_series",
    "REACTION_TIME", "reaction_time_series",
    "datasets", "STATS", "DatasetNotFoundError", "InMemoryLoader", "dataset", "in_memory", "load_tensors",
]

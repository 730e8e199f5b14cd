"""Model components (re-exporting the core's activations, adapters and pipeline stages):
recurrence operators, the retina front end, readouts, losses, the stability report,
speed options, cortex-like components (divisive normalization, adaptation, E/I) and the
model zoo."""

from dynode.activations import ACTIVATIONS, RectifiedPower, Supralinear, get_activation
from dynode.adapters import Adapter, Resize, adapter
from dynode.pipeline import Combine, SumCombine, build_pipeline
from dynode.models.recurrence import RECURRENCE_TYPES, LocalRecurrence, SelfRecurrence, recurrence
from dynode.models.retina import Retina
from dynode.models.readout import Classifier, Readout
from dynode.models.decision import EVIDENCE, Decisions, add_accumulator, decide, race
from dynode.models.stability import spectral_radius, stability_report, summary
from dynode.models import ensemble, losses  # noqa: E402
from dynode.models.speed import SpeedOptions, prepare_for_speed
from dynode.models.normalization import POOLS, Divide, Pool, Subtract, add_normalization
from dynode.models.adaptation import ADAPTATION_KINDS, add_adaptation
from dynode.models.ei import SignedConv, add_inhibition, dale_signs, signed_recurrence
from dynode.models.zoo import alexnet_like, cordsnet, cornet_rt, dyrcnn
from dynode.models.published import dyrcnn_published

__all__ = [
    "ACTIVATIONS", "RectifiedPower", "Supralinear", "get_activation",
    "Adapter", "Resize", "adapter", "Combine", "SumCombine", "build_pipeline",
    "RECURRENCE_TYPES", "LocalRecurrence", "SelfRecurrence", "recurrence",
    "Retina",
    "Classifier", "Readout", "EVIDENCE", "Decisions", "add_accumulator", "decide", "race", "spectral_radius", "stability_report", "summary", "ensemble", "losses",
    "SpeedOptions", "prepare_for_speed", "alexnet_like", "cordsnet", "cornet_rt", "dyrcnn",
    "dyrcnn_published",
]

r"""Experimental protocols: labelled batches of conditions with exact timing in ms, and the
registry of in-silico experiments (:data:`EXPERIMENTS`).

A protocol is a :class:`Protocol` (a :class:`~dynode.stimuli.compose.Modulated` stimulus)
whose batch holds every (condition, image) pair, condition-major: sample
``i * n_images + j`` is condition ``i`` shown with image ``j``. Its ``conditions`` label every
sample (``contrast``, ``duration`` (ms, of each pulse), ``isi`` (ms; 0 for a single pulse),
``n_pulses``, ``onset`` (ms), ``image``), its ``breakpoints`` are the exact onsets and
offsets, and ``t_end`` is the end of the epoch, so a run is::

    p = dn.stimuli.groen2022("duration", images=imgs)
    sol = dn.integrate(net, p, t_end=p.t_end, dt=1.0)

Images are shown around the ``background`` at the given contrast: ``I = g + c (x - g)``
while a pulse is on and ``I = g`` otherwise. ``background`` is the screen of
:func:`~dynode.stimuli.compose.resolve_background`, default :data:`~dynode.stimuli.compose.BACKGROUND`
(``"mean"``: each image's mean luminance, right for raw and normalised images alike);
``"grey"`` (0.5) is the mid-grey of raw images in [0, 1], ``"blank"`` (0) the mean grey of
images normalised to their data set's mean.

:func:`present` shows a labelled image batch (e.g. a CIFAR batch) for a while after the
background. Generic builders: :func:`contrast_series`, :func:`duration_series`,
:func:`interval_series`; :func:`groen2022` gives the conditions of Groen et al. (2022,
J Neurosci 42(40):7562), one :class:`Experiment` each in :data:`EXPERIMENTS`:

* ``"contrast"``: 500 ms at contrast 0.0625, 0.125, 0.25, 0.5, 1;
* ``"duration"``: one full-contrast pulse of 17, 33, 67, 133, 267, 533 ms;
* ``"repetition"``: two full-contrast 133 ms pulses with a gap of 17, 33, 67, 133, 267, 533 ms,

and one more kind, ``"reaction_time"``: each image at each contrast until a response deadline
(:func:`reaction_time_series`, :data:`REACTION_TIME`), read by an accumulator readout
(:mod:`dynode.models.decision`) rather than as time courses (its record's ``analysis``).

The Groen kinds are in epochs from -0.1 s to 1.2 s around the onset, as in Groen's data (stimulus onset at
``onset = 100`` ms by default, epoch ``[0, 1300)`` ms): the 100 ms before the onset are the
baseline, and the recovery window of the longest ISI (its second pulse starts 666 ms after
the onset) ends inside the epoch.

Adding an experiment kind is one :class:`Experiment` in :data:`EXPERIMENTS` (its builder,
conditions, condition dimension and the conditions its analysis reads): the configs, the
runner (:func:`dynode.experiments.groen2022_experiments`) and the analysis' tables read it
from there; its metrics go into :mod:`dynode.analysis`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor

from dynode.errors import ConfigurationError
from dynode.stimuli import envelopes as E
from dynode.stimuli.compose import BACKGROUND, Modulated, as_float_images
from dynode.stimuli.generated import grating

__all__ = ["Protocol", "present", "contrast_series", "duration_series", "interval_series", "groen2022",
           "GROEN2022", "Experiment", "EXPERIMENTS", "default_images", "reaction_time_series", "REACTION_TIME"]

GROEN2022 = {
    "contrast": dict(contrasts=(0.0625, 0.125, 0.25, 0.5, 1.0), duration=500.0),
    "duration": dict(durations=(17.0, 33.0, 67.0, 133.0, 267.0, 533.0), contrast=1.0),
    "repetition": dict(isis=(17.0, 33.0, 67.0, 133.0, 267.0, 533.0), duration=133.0, contrast=1.0),
    "epoch_ms": 1300.0,
    "baseline_ms": 100.0,
}
"""The stimulus conditions of Groen et al. (2022), times in ms."""

REACTION_TIME = {
    "contrasts": (0.0625, 0.125, 0.25, 0.5, 1.0),
    "noises": (0.0, 0.05, 0.1, 0.2),
    "bounds": (0.5, 1.0, 1.5, 2.0, 3.0),
    "epoch_ms": 800.0,
}
"""The reaction-time experiment's default conditions: image contrasts, accumulator noise levels
``nu`` and bounds ``B`` (:mod:`dynode.models.decision`), and the deadline (ms after the
onset, the end of the epoch: a trial without a decision by then has none). The image stays on
until the deadline (a speeded classification: respond while the image is shown)."""


class Protocol(Modulated):
    """A labelled condition batch (see the module docstring).

    Extra attributes: ``name``, ``onset`` (ms), ``t_end`` (ms, end of the epoch), ``n_images``.
    """

    def __init__(self, images, envelope, *, name: str, onset: float, t_end: float, n_images: int,
                 background=BACKGROUND, input: str | None = None, conditions=None):
        super().__init__(images, envelope, background=background, input=input, conditions=conditions)
        self.name, self.onset, self.t_end, self.n_images = name, float(onset), float(t_end), n_images
        if self.breakpoints and self.breakpoints[-1] > self.t_end:
            raise ConfigurationError(f"protocol {name!r}: the last offset ({self.breakpoints[-1]} ms) "
                                     f"is after the end of the epoch t_end={self.t_end} ms; raise t_end")

    def to(self, device=None, dtype=None) -> "Protocol":
        images = self.images.to(device=device, dtype=dtype if dtype is not None else self.images.dtype)
        return Protocol(images, self.envelope, name=self.name, onset=self.onset, t_end=self.t_end,
                        n_images=self.n_images, background=self.background_spec, input=self.input,
                        conditions=self.conditions)

    def __repr__(self) -> str:
        return (f"Protocol({self.name!r}, batch={self.batch_size}, images={self.n_images}, "
                f"onset={self.onset}, t_end={self.t_end}, breakpoints={list(self.breakpoints)})")


def default_images(size: int = 32, channels: int = 3) -> Tensor:
    """One full-contrast vertical grating (4 cycles per image, mean 0.5): ``(1, C, size, size)``."""

    return grating(size, orientation=0.0, frequency=4.0, contrast=1.0, channels=channels)


def _images(images) -> Tensor:
    if images is None:
        return default_images()
    images = as_float_images(images)
    if images.dim() < 2:
        raise ConfigurationError(f"images must be batch first (N, *shape), got shape {tuple(images.shape)}")
    return images


def _values(values, name: str, positive: bool = True) -> list[float]:
    vals = [float(v) for v in (values if isinstance(values, Sequence) or hasattr(values, "__iter__")
                                else [values])]
    if not vals:
        raise ConfigurationError(f"{name}: give at least one value")
    if positive and any(not v > 0 for v in vals):
        raise ConfigurationError(f"{name} must be > 0, got {vals}")
    return vals


def _build(name: str, images, env_per_condition: Sequence[E.Envelope], labels: dict, *,
           onset: float, t_end: float, background, input) -> Protocol:
    imgs = _images(images)
    n_img, n_cond = imgs.shape[0], len(env_per_condition)
    env = E.stack([e for e in env_per_condition for _ in range(n_img)])
    x = imgs.repeat(n_cond, *([1] * (imgs.dim() - 1)))
    # a label given as one value holds for every condition
    conditions = {k: [v for v in (vals if isinstance(vals, list) else [vals] * n_cond) for _ in range(n_img)]
                  for k, vals in labels.items()}
    conditions["image"] = list(range(n_img)) * n_cond
    return Protocol(x, env, name=name, onset=onset, t_end=t_end, n_images=n_img, background=background,
                    input=input, conditions=conditions)


def present(images, *, onset: float = 0.0, duration: float | None = None, labels=None,
            contrast: float = 1.0, background=BACKGROUND, t_end: float | None = None,
            input: str | None = None) -> Protocol:
    """Show ``images`` (a batch) at ``contrast`` from ``onset`` for ``duration`` ms (``None``:
    until the end), the ``background`` before and after; ``labels`` (one per image, e.g. the
    class labels of a data-set batch) become the ``label`` condition.

    ``present(x, onset=20.0, duration=40.0, labels=y)``: 20 ms of the background, the batch
    for 40 ms.
    ``t_end`` defaults to the offset (or the onset, for an image that stays on)."""
    imgs = _images(images)
    n = imgs.shape[0]
    env = E.step(onset, contrast) if duration is None else E.pulse(onset, _values(duration, "duration")[0],
                                                                     contrast)
    if t_end is None:
        t_end = float(onset) + (0.0 if duration is None else float(duration))
    conditions = {} if labels is None else {"label": labels.tolist() if isinstance(labels, Tensor) else list(labels)}
    return Protocol(imgs, env, name="present", onset=onset, t_end=t_end, n_images=n, background=background,
                    input=input, conditions=conditions)


def contrast_series(images=None, contrasts=(0.0625, 0.125, 0.25, 0.5, 1.0), *, onset: float = 100.0,
                    duration: float = 500.0, t_end: float = 1000.0, background=BACKGROUND,
                    input: str | None = None) -> Protocol:
    """One pulse ``[onset, onset + duration)`` per contrast (values in [0, 1] around ``background``)."""
    cs = _values(contrasts, "contrasts", positive=False)
    if any(c < 0 for c in cs):
        raise ConfigurationError(f"contrasts must be >= 0, got {cs}")
    duration = _values(duration, "duration")[0]
    envs = [E.pulse(onset, duration, c) for c in cs]
    labels = dict(contrast=cs, duration=duration, isi=0.0, n_pulses=1, onset=float(onset))
    return _build("contrast", images, envs, labels, onset=onset, t_end=t_end, background=background,
                  input=input)


def duration_series(images=None, durations=(17.0, 33.0, 67.0, 133.0, 267.0, 533.0), *,
                    onset: float = 100.0, contrast: float = 1.0, t_end: float = 1000.0, background=BACKGROUND,
                    input: str | None = None) -> Protocol:
    """One pulse of each duration (ms) at ``contrast``, all starting at ``onset``."""
    ds = _values(durations, "durations")
    envs = [E.pulse(onset, d, contrast) for d in ds]
    labels = dict(contrast=float(contrast), duration=ds, isi=0.0, n_pulses=1, onset=float(onset))
    return _build("duration", images, envs, labels, onset=onset, t_end=t_end, background=background,
                  input=input)


def interval_series(images=None, isis=(17.0, 33.0, 67.0, 133.0, 267.0, 533.0), *, onset: float = 100.0,
                    duration: float = 133.0, contrast: float = 1.0, t_end: float = 1000.0,
                    background=BACKGROUND, input: str | None = None) -> Protocol:
    """Two pulses of ``duration`` ms separated by each inter-stimulus interval (offset of the
    first to onset of the second, ms): on ``[onset, onset + duration)`` and
    ``[onset + duration + isi, onset + 2 duration + isi)``."""
    gaps = _values(isis, "isis")
    duration = _values(duration, "duration")[0]
    envs = [E.two_pulses(onset, duration, g, contrast) for g in gaps]
    labels = dict(contrast=float(contrast), duration=duration, isi=gaps, n_pulses=2, onset=float(onset))
    return _build("repetition", images, envs, labels, onset=onset, t_end=t_end, background=background,
                  input=input)


def reaction_time_series(images=None, contrasts=REACTION_TIME["contrasts"], *, onset: float = 0.0,
                         t_end: float = REACTION_TIME["epoch_ms"], background=BACKGROUND,
                         input: str | None = None) -> Protocol:
    """The reaction-time experiment's stimulus: each image at each contrast from ``onset``
    until ``t_end`` (the response deadline, ms), the ``background`` before; the conditions
    ``contrast``, ``duration`` (``t_end - onset``), ``onset``, ``image``."""
    if not t_end > onset:
        raise ConfigurationError(f"reaction_time_series: the deadline t_end={t_end} ms must be after the onset "
                                 f"({onset} ms)")
    p = contrast_series(images, contrasts, onset=onset, duration=float(t_end) - float(onset), t_end=t_end,
                        background=background, input=input)
    p.name = "reaction_time"
    return p


@dataclass(frozen=True)
class Experiment:
    """One in-silico experiment kind: the one place that knows it (:data:`EXPERIMENTS`).

    name : the kind (``"contrast"``): its key in configs, ``kinds=`` and the analysis.
    build : the stimulus builder, ``build(images, **conditions, onset=, t_end=, background=,
        input=) -> Protocol`` (e.g. :func:`contrast_series`).
    conditions : the builder's keyword arguments that fix the paper's conditions.
    by : the condition that varies across the batch: the analysis' condition dimension.
    needs : the conditions (archive coordinates along ``sample``) its analysis reads.
    study : the prefix of its protocol's and archive's name (``groen2022-contrast``).
    baseline_ms, epoch_ms : the epoch starts ``baseline_ms`` before the onset and lasts
        ``epoch_ms``.
    analysis : which analysis reads its archives: ``"groen2022"`` (the population time courses,
        :func:`dynode.analysis.analyze`; run by :func:`dynode.experiments.groen2022_experiments`)
        or ``"reaction_time"`` (reaction times and choices of an accumulator readout,
        :func:`dynode.analysis.analyze_reaction_times`; run by
        :func:`dynode.experiments.reaction_time_experiment`).
    """

    name: str
    build: Callable[..., Protocol]
    conditions: Mapping
    by: str
    needs: tuple[str, ...]
    study: str = "groen2022"
    baseline_ms: float = GROEN2022["baseline_ms"]
    epoch_ms: float = GROEN2022["epoch_ms"]
    analysis: str = "groen2022"

    @property
    def label(self) -> str:
        """``<study>-<name>``: the protocol's name and the archive's file stem."""
        return f"{self.study}-{self.name}"

    def protocol(self, images=None, *, onset: float = 100.0, background=BACKGROUND,
                 input: str | None = None) -> Protocol:
        """The conditions x ``images`` batch, stimulus onset at ``onset`` ms (the baseline before it)."""
        t_end = onset - self.baseline_ms + self.epoch_ms
        p = self.build(images, **self.conditions, onset=onset, t_end=t_end, background=background, input=input)
        p.name = self.label
        return p


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("contrast", contrast_series, GROEN2022["contrast"], by="contrast", needs=("contrast", "duration")),
    Experiment("duration", duration_series, GROEN2022["duration"], by="duration", needs=("duration", "contrast")),
    Experiment("repetition", interval_series, GROEN2022["repetition"], by="isi",
               needs=("isi", "duration", "contrast")),
    Experiment("reaction_time", reaction_time_series, {"contrasts": REACTION_TIME["contrasts"]}, by="contrast",
               needs=("contrast", "label"), study="speeded", baseline_ms=0.0, epoch_ms=REACTION_TIME["epoch_ms"],
               analysis="reaction_time"),
)}
"""Every in-silico experiment kind, by name (read by the configs, the runner and the analysis)."""


def groen2022(kind: str, images=None, *, onset: float = 100.0, background=BACKGROUND,
              input: str | None = None) -> Protocol:
    """The conditions of Groen et al. (2022) for ``kind`` in ``"contrast"``, ``"duration"``,
    ``"repetition"`` (see :data:`GROEN2022`; the kinds of :data:`EXPERIMENTS` whose study is
    ``groen2022``), as one
    labelled batch (conditions x images) in an epoch that starts ``onset`` ms (default 100,
    the baseline) before the stimulus and ends 1.2 s after it (Groen's epochs: -0.1 to 1.2 s).

    ``background``: the screen between pulses, in the units the model is fed (default
    ``"mean"``, each image's mean luminance: contrast changes around it keep the mean
    constant, as on Groen's mean-grey screen); ``"grey"`` (0.5) for raw images in [0, 1],
    ``"blank"`` (0) for images normalised to their data set's mean."""
    kinds = [k for k, e in EXPERIMENTS.items() if e.study == "groen2022"]
    if kind not in kinds:
        raise ConfigurationError(f"groen2022 kind must be one of {kinds}, got {kind!r}"
                                 + ("; the reaction-time stimulus is EXPERIMENTS['reaction_time'].protocol(images)"
                                    if kind in EXPERIMENTS else ""))
    return EXPERIMENTS[kind].protocol(images, onset=onset, background=background, input=input)

r"""Fitting a model's time constants, delays, normalisation and observation gains to recorded
time courses (issue 24): :func:`fit` (``dn.fit``), :class:`FitConfig` and
:func:`run_fit_config` (``dynode fit CONFIG``).

One concept per module, in import order:

* :mod:`~dynode.fit.params`: parameter names (``tau:V1``, ``delay:V1->V2``, ``norm:V1``,
  ``gain``, ...) -> the model's tensors that are fitted (:data:`PARAM_KINDS`);
* :mod:`~dynode.fit.conditions`: recordings -> the fitted areas, experiments and courses, each
  experiment's conditions rebuilt as one stimulus batch by its own builder;
* :mod:`~dynode.fit.problem`: the simulation, the observation ``y = g obs(model) + o`` and the
  loss ``mean_a (1 - R^2_a)``; :func:`simulate_recordings` (model data);
* :mod:`~dynode.fit.result`: :class:`FitResult`;
* :mod:`~dynode.fit.checkpoint`: what identifies a fit in its checkpoint;
* :mod:`~dynode.fit.engine`: :func:`fit`, the restarts, iterations, checkpoints and divergence
  (:data:`OPTIMIZERS`, :class:`FitDivergenceWarning`);
* :mod:`~dynode.fit.networks`: :func:`dn_network`, the DN model as a dynode network;
* :mod:`~dynode.fit.plot`: :func:`plot_fit`;
* :mod:`~dynode.fit.config`: :class:`FitConfig` (:class:`FitModel`, :class:`FitSettings`),
  :func:`run_fit_config` and :func:`fit_command` (``dynode fit CONFIG``).

``dynode.fit.fit`` (``dn.fit``) is the function; the package is
``importlib.import_module("dynode.fit")``.
"""

from dynode.fit.config import FitConfig, FitModel, FitSettings, fit_command, run_fit_config
from dynode.fit.engine import OPTIMIZERS, FitDivergenceWarning, fit
from dynode.fit.networks import dn_network
from dynode.fit.params import PARAM_KINDS
from dynode.fit.plot import plot_fit
from dynode.fit.problem import simulate_recordings
from dynode.fit.result import FitResult

__all__ = ["fit", "FitResult", "FitConfig", "FitModel", "FitSettings", "run_fit_config", "dn_network",
           "simulate_recordings", "plot_fit", "fit_command", "PARAM_KINDS", "OPTIMIZERS",
           "FitDivergenceWarning"]

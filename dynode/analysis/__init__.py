"""Analysis of recordings: population time courses per condition, the metrics of Groen et al.
(2022) by their definitions, the delayed normalisation model fit, figures and a one-call
summary (:func:`analyze`, :func:`summarize`, :func:`format_summary`); the reaction-time
experiment's analysis (:func:`analyze_reaction_times`: RT quantiles, accuracy, flags, figure)."""

from dynode.analysis.courses import (align_to_onset, all_time_courses, as_tree, conditions,
                                     subtract_baseline, time_courses)
from dynode.analysis.dn import BOUND_TOL, DN_BOUNDS, DN_PARAMS, DN_START, DNFit, dn_model, fit_dn, pulse_envelope
from dynode.analysis.metrics import (ISI_WINDOW, PLATEAU, SMOOTH_MS, SUM_WINDOW, HyperbolicRatioFit,
                                     asymptote_to_peak, c50, fit_hyperbolic_ratio, fwhm, half_rise_latency,
                                     hyperbolic_ratio, isi_recovery, peak_response, smooth, summation_ratio,
                                     summation_ratios, summation_window, summed_response, time_step, time_to_peak)
from dynode.analysis.figures import (plot_contrast_response, plot_convergence, plot_recovery, plot_summation,
                                     plot_time_courses)
from dynode.analysis.reaction_time import (QUANTILES, ReactionTimes, analyze_reaction_times, format_reaction_times,
                                           is_reaction_time_archive, plot_reaction_times, trends)
from dynode.analysis.summary import (BASELINE, DRIFT_TOL, NEEDS, Analysis, analyze, analyze_courses, experiment_kind,
                                     flags_in_tables, format_summary, summarize)

__all__ = [
    "as_tree", "conditions", "time_courses", "all_time_courses", "align_to_onset", "subtract_baseline",
    "summed_response", "summation_ratios", "summation_ratio", "isi_recovery", "time_to_peak",
    "half_rise_latency", "peak_response", "smooth", "asymptote_to_peak", "fwhm", "summation_window",
    "hyperbolic_ratio", "fit_hyperbolic_ratio", "HyperbolicRatioFit", "c50", "time_step",
    "SUM_WINDOW", "ISI_WINDOW", "SMOOTH_MS", "PLATEAU",
    "dn_model", "fit_dn", "DNFit", "DN_PARAMS", "DN_START", "DN_BOUNDS", "BOUND_TOL", "pulse_envelope",
    "plot_time_courses", "plot_summation", "plot_recovery", "plot_contrast_response", "plot_convergence",
    "experiment_kind", "Analysis", "analyze", "analyze_courses", "summarize", "format_summary", "flags_in_tables", "BASELINE", "DRIFT_TOL", "NEEDS",
    "QUANTILES", "ReactionTimes", "analyze_reaction_times", "format_reaction_times", "is_reaction_time_archive",
    "plot_reaction_times", "trends",
]

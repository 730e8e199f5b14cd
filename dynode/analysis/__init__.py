"""Analysis of recordings: population time courses per condition, the metrics of Groen et al.
(2022), the delayed normalisation model fit, figures and a one-call summary."""

from dynode.analysis.courses import (align_to_onset, all_time_courses, as_tree, conditions,
                                     subtract_baseline, time_courses)
from dynode.analysis.dn import DN_BOUNDS, DN_PARAMS, DN_START, DNFit, dn_model, fit_dn
from dynode.analysis.metrics import (HyperbolicRatioFit, asymptote_to_peak, c50, fit_hyperbolic_ratio, fwhm,
                                     hyperbolic_ratio, isi_recovery, summation_ratio, summation_ratios,
                                     summation_window, summed_response, time_step, time_to_peak)
from dynode.analysis.figures import plot_contrast_response, plot_recovery, plot_summation, plot_time_courses
from dynode.analysis.summary import Analysis, analyze, experiment_kind, summarize

__all__ = [
    "as_tree", "conditions", "time_courses", "all_time_courses", "align_to_onset", "subtract_baseline",
    "summed_response", "summation_ratios", "summation_ratio", "isi_recovery", "time_to_peak",
    "asymptote_to_peak", "fwhm", "summation_window", "hyperbolic_ratio", "fit_hyperbolic_ratio",
    "HyperbolicRatioFit", "c50", "time_step",
    "dn_model", "fit_dn", "DNFit", "DN_PARAMS", "DN_START", "DN_BOUNDS",
    "plot_time_courses", "plot_summation", "plot_recovery", "plot_contrast_response",
    "experiment_kind", "Analysis", "analyze", "summarize",
]

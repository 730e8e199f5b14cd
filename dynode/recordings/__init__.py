"""Recorded data in (issue 24): the layout of recordings, their loaders, the Groen metrics on
them and the model-data comparison.

One concept per module, in import order:

* :mod:`~dynode.recordings.layout`: the layout (format version :data:`FORMAT_VERSION`, the
  dimensions, coordinates and attributes), :func:`validate_recordings`,
  :func:`make_recordings` (from arrays) and :func:`match_areas` (model populations ->
  recorded areas);
* :mod:`~dynode.recordings.io`: :func:`load_recordings` (a Dataset, NetCDF, zarr or long CSV;
  time converted to ms), :func:`read_csv` and :func:`write_csv`;
* :mod:`~dynode.recordings.analysis`: the recordings as the analysis' courses
  (:func:`recording_courses`) and their Groen metrics (:func:`analyze_recordings`), computed
  as on model archives;
* :mod:`~dynode.recordings.align`: a model course aligned to a recorded one (latency shift,
  gain and offset by least squares);
* :mod:`~dynode.recordings.compare`: the comparison per area and metric and its score
  (:class:`Comparison`, :func:`compare_recordings`, :func:`format_comparison`).

Every problem is a :class:`~dynode.errors.DynodeError` before any computation, naming the
field and what to change; loading reads numbers and strings only (nothing a file names is
imported or called).
"""

from dynode.recordings.analysis import analyze_recordings, recording_courses
from dynode.recordings.compare import (MAX_SHIFT, METRICS, SCORE, WINDOW, Comparison, compare_recordings,
                                       format_comparison)
from dynode.recordings.io import CSV_COLUMNS, TIME_UNITS, load_recordings, read_csv, write_csv
from dynode.recordings.layout import (CONDITION_COORDS, FORMAT_VERSION, RecordingsError, make_recordings,
                                      match_areas, validate_recordings)

__all__ = ["FORMAT_VERSION", "CONDITION_COORDS", "CSV_COLUMNS", "TIME_UNITS", "load_recordings",
           "validate_recordings", "read_csv", "write_csv", "make_recordings", "recording_courses",
           "match_areas", "analyze_recordings", "RecordingsError", "Comparison", "compare_recordings",
           "format_comparison", "MAX_SHIFT", "WINDOW", "SCORE", "METRICS"]

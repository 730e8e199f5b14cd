"""Trajectory archives: the xarray/zarr layout, streamed writing, reading and export.

One module per concept, in import order (each imports only those before it):

* :mod:`~dynode.archive.lease`: the writer's lease (who writes an archive, and whether it
  may still be alive);
* :mod:`~dynode.archive.layout`: what an archive holds (:class:`Layout`, :class:`Block`,
  the CF attributes) and its store format (codecs, root metadata);
* :mod:`~dynode.archive.verify`: :func:`verify_archive` and :func:`repair_archive`;
* :mod:`~dynode.archive.reading`: :func:`open_archive` and the accessors;
* :mod:`~dynode.archive.writer`: the writers (a zarr store, memory) and their crash-safety
  protocol;
* :mod:`~dynode.archive.stream`: the solver's observer and the writer thread;
* :mod:`~dynode.archive.export`: :func:`to_brainscore`.

A recording run flows ``dynode.simulate`` -> ``dynode.record`` (which states are kept and
the :class:`Layout` they are stored in) -> this package (streamed, written, read back).
"""

from dynode.archive.export import to_brainscore
from dynode.archive.layout import (ARCHIVE_FORMAT, COMPRESSIONS, RATE_UNITS, Block, GroupSpec, Layout,
                                   condition_coords)
from dynode.archive.lease import (CLOCK_SKEW_S, HEARTBEAT_S, LEASE_ATTR, LEASE_TIMEOUT_S, LeaseState,
                                  boot_id, lease_state, proc_stat)
from dynode.archive.reading import (IncompleteArchiveWarning, archive_config, open_archive,
                                    population_time_course, population_time_courses, populations,
                                    select_conditions, time_window)
from dynode.archive.stream import Streamer
from dynode.archive.verify import Damage, VerifyReport, repair_archive, verify_archive
from dynode.archive.writer import MemoryArchiveWriter, ZarrArchiveWriter, check_writable, prepare_path

__all__ = [
    "ARCHIVE_FORMAT", "IncompleteArchiveWarning", "Layout", "GroupSpec", "Block",
    "ZarrArchiveWriter", "MemoryArchiveWriter", "open_archive", "archive_config", "repair_archive",
    "verify_archive", "VerifyReport", "Damage", "LeaseState", "lease_state", "HEARTBEAT_S",
    "LEASE_TIMEOUT_S", "CLOCK_SKEW_S",
    "select_conditions", "time_window", "population_time_course", "population_time_courses", "to_brainscore",
]

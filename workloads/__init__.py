"""What arrives at the servers: synthetic generators and real-trace readers.

Everything produces one columnar :class:`Workload`; :func:`build_workload` turns a scenario's
``workload:`` section (:class:`WorkloadCfg`) into one. This package never imports
``simulator``.
"""

from __future__ import annotations

from servesim.workloads.config import WorkloadCfg, build_workload
from servesim.workloads.request import COLUMNS, Workload
from servesim.workloads.stats import WorkloadStats, workload_stats
from servesim.workloads.traces import FORMATS, detect_format, read_trace, write_workload

__all__ = [
    "COLUMNS",
    "FORMATS",
    "Workload",
    "WorkloadCfg",
    "WorkloadStats",
    "build_workload",
    "detect_format",
    "read_trace",
    "workload_stats",
    "write_workload",
]

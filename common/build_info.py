"""`livemig_build_info` and metric-wide settings both services share.

Imported by sender/metrics.py and receiver/metrics.py before they define their
metrics: `_created` series are disabled (every counter would otherwise double
with a timestamp series nobody graphs), and the build info is registered once
per process even where both services' metrics are imported together.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import Gauge, disable_created_metrics

disable_created_metrics()


def _version() -> str:
    try:
        return version("livemig")
    except PackageNotFoundError:  # pragma: no cover - a checkout without install
        return "unknown"


BUILD_INFO = Gauge("livemig_build_info", "livemig version running here (always 1)", ["version", "python"])
BUILD_INFO.labels(_version(), platform.python_version()).set(1)

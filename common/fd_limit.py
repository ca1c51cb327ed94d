"""The open-file limit of a service, raised to what the host allows.

A receiver opens a destination file per region a batch touches in each data
worker, and a sender a guest file per region in each connection process. The
usual soft limit of 1024 is a default for interactive shells, not a bound this
service chose: with it, 8 sessions of 1005 regions in total blocked every new
session with "Too many open files" (issue 20). The hard limit is what the
administrator allows; the soft one is raised to it at start, and processes
started afterwards (the fork server and its workers) inherit it.
"""

from __future__ import annotations

import resource


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft

"""Imported in the fork server only (as a preload): it ignores SIGTERM.

The fork server is in its parent's process group, so a group-wide SIGTERM
(systemd, `timeout`, a terminal) would kill it before the parent has stopped
its workers in order; the parent would then lose every worker's exit status
(multiprocessing reports 255 for all of them). The fork server still exits when
its parent does (multiprocessing watches the parent's end of a pipe).
"""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)

"""When a data-plane process's page streams have all closed for a while: the moment to give memory back.

Trimming the heap is explicit in data-plane processes (common/allocator.py). A
data worker (its streams: a session's page streams) and a connection process (its
stream: one migration's connection) trim once no stream has been open for
QUIET_SECONDS, once per quiet spell, and at a stream's end only where the free heap
has grown past what the next one needs (KEPT_BETWEEN_SESSIONS_BYTES,
give_back_if_grown), so that a process that is never quiet still gives back the
peak of a session with many streams:

- What a session's streams freed is what the next session needs (gRPC's receive
  buffers and the joined message of every batch: about 65 MiB per stream at
  8 MiB batches). Given back at each session's end, it was faulted in again at
  the next, fresh zeroed pages: 130 MiB per 2 GiB migration over two workers,
  2.4 MiB with the buffers kept (perf, page-faults by pid). On this VM a first touch of a page its host had
  taken back costs up to 3 s per GiB, so back-to-back migrations right after a
  QEMU run were 10 % slower with the trim at session end (2 GiB, 100 % touched,
  2 connections, 8 rounds alternating: 4685 against 4217 ms, receiver 2.58
  against 2.29 CPU s/GiB, the kept heap faster in every one of the 8 rounds). The
  two pairs read images of their own, which on this VM can differ by up to 10 % on
  their own (docs/benchmarks.md, stop 20): the fault counts stand, the time may
  carry some of that.
- A connection process's frames are the same story at the source: trimmed after
  every migration, each of its processes faulted in about 64 MiB of heap again at
  the next (33 000 against 16 000 page faults per process per 2 GiB migration at
  50 % touched, the rest being the guest's pages mapped to be scanned); kept, the
  sender spent 0.550 against 0.570 CPU s/GiB (docs/benchmarks.md, stop 21).
- The streams of a failed or cancelled migration may still be receiving, and
  holding megabyte buffers, when its session ends; a trim at the end missed what
  they freed after it (a worker kept 0.6-0.9 GB after a failed 128-connection
  migration). A quiet spell comes after the last of them.

Ten seconds is jemalloc's default for giving back unused dirty pages: long
enough for the next migration of a host being drained, short enough that an idle
service holds nothing for long.
"""

from __future__ import annotations

import threading
import time

from livemig.common.allocator import free_heap_bytes, release_free_memory

QUIET_SECONDS = 10.0
# What an operator may choose (--keep-buffers-seconds). Not 0: with no stream open the
# process's idle wait is a quiet spell long (seconds_until_due), and would spin.
MIN_QUIET_SECONDS = 1.0
MAX_QUIET_SECONDS = 3600.0
# Free heap a process may keep past a stream's end for the next: four data streams'
# worth at 8 MiB batches (gRPC's receive buffers and joined messages, ~65 MiB a stream);
# a connection process's frames and gRPC's send buffers take less.
KEPT_BETWEEN_SESSIONS_BYTES = 256 << 20


class StreamActivity:
    """Open page streams of one process, and whether memory was given back since."""

    def __init__(self, quiet_seconds: float = QUIET_SECONDS) -> None:
        if quiet_seconds <= 0:
            raise ValueError("a quiet spell lasts a while: its length must be positive")
        self.quiet_seconds = quiet_seconds
        self._open = 0
        self._last_closed = time.monotonic()
        self._busy_since_trim = False
        self._lock = threading.Lock()

    def opened(self) -> None:
        with self._lock:
            self._open += 1
            self._busy_since_trim = True

    def closed(self) -> None:
        with self._lock:
            self._open -= 1
            self._last_closed = time.monotonic()

    @property
    def open_streams(self) -> int:
        with self._lock:
            return self._open

    def due_for_trim(self) -> bool:
        """No stream open for quiet_seconds, and one was open since the last trim."""
        with self._lock:
            quiet = time.monotonic() - self._last_closed >= self.quiet_seconds
            return self._busy_since_trim and self._open == 0 and quiet

    def seconds_until_due(self) -> float:
        """How long the worker may wait before due_for_trim() can turn true: the rest of
        the quiet spell once every stream has closed, else a whole one (a spell cannot
        end sooner than that after a stream that is open now, or opens later, closes)."""
        with self._lock:
            if self._busy_since_trim and self._open == 0:
                return max(0.0, self._last_closed + self.quiet_seconds - time.monotonic())
            return self.quiet_seconds

    def trimmed(self) -> None:
        """Memory was given back; with streams still open, the next quiet spell trims again."""
        with self._lock:
            if self._open == 0:
                self._busy_since_trim = False


def give_back_if_quiet(activity: StreamActivity) -> None:
    """Trim the heap if the quiet spell is over (the process's idle wait timed out)."""
    if activity.due_for_trim():
        release_free_memory()
        activity.trimmed()


def give_back_if_grown(activity: StreamActivity) -> None:
    """At a stream's end: a heap grown past KEPT_BETWEEN_SESSIONS_BYTES (many streams at
    once) goes back now, busy or not; what is left is kept for the next stream."""
    if (free := free_heap_bytes()) is None or free > KEPT_BETWEEN_SESSIONS_BYTES:
        release_free_memory()
        activity.trimmed()  # counts only with no stream open, as before

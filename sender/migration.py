"""One migration: the state machine and the policy around the transfer pool.

PENDING -> RUNNING -> COMPLETED | FAILED | CANCELLED. Without dirty logs memory
is sent once (paused first when a guest to pause is known). With dirty logs the
migration is live: iteration 0 sends all memory, each later iteration the pages
dirtied since the previous collection, until the expected downtime fits the
target; then the guest is paused, the last dirty pages are sent and the receiver
completes. COMPLETED only after every batch was acknowledged and the receiver
accepted the totals (and, with verify, the digest): the source guest then stays
paused. Anything else ends FAILED or CANCELLED with a reason, the guest resumed
and the receiver's half-written destination aborted.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from livemig.common.allocator import release_free_memory
from livemig.common.digest import expected_verify_seconds, memory_digest
from livemig.common.guest_memory import MemoryLayout
from livemig.common.human import format_bytes
from livemig.common.logs import for_migration
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.ranges import align_down
from livemig.common.tls import INSECURE, Security
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES, channel_options
from livemig.common.wire import to_pb_ranges
from livemig.sender import metrics
from livemig.sender.bandwidth_cap import WireBudget
from livemig.sender.capacity import read_ahead_pays
from livemig.sender.connection_process import ConnectionSpec, source_regions
from livemig.sender.convergence import ConvergencePolicy, Decision
from livemig.sender.defaults import DEFAULT_CHUNK_SPAN_FACTOR
from livemig.sender.dirty_log import DirtyLog
from livemig.sender.failures import describe_failure
from livemig.sender.guest import GuestControl
from livemig.sender.pause_records import PauseRecords
from livemig.sender.precopy_steering import PrecopySteering
from livemig.sender.qmp_guest import QmpGuest
from livemig.sender.stats import MigrationStats
from livemig.sender.transfer import TransferPool, TransferStopped

log = logging.getLogger("livemig.sender")

State = pb.MigrationState
FINAL_STATES = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED})
CONTROL_TIMEOUT_SECONDS = 15.0
STATUS_ITERATIONS = 64  # the latest iterations a status carries (a long pre-copy has thousands)
ABORT_TIMEOUT_SECONDS = 5.0  # best effort on a failure path: the receiver may be gone
COMPLETE_TIMEOUT_SECONDS = 600.0  # the receiver digests all destination memory


@dataclass(frozen=True, slots=True)
class MigrationRequest:
    """A validated StartMigration request, with the API defaults applied."""

    destination: str
    connections: int
    skip_zero_pages: bool
    page_size: int
    verify: bool
    max_batch_bytes: int
    downtime_ms: int = 300
    timeout_ms: int = 0
    force_on_timeout: bool = False
    max_iterations: int = 30
    available_bandwidth: float = 0.0
    auto_converge: bool = False
    stall_timeout_ms: int = 0
    max_bandwidth: float = 0.0  # wire bytes/s of all connections together; 0: no cap
    compression: int = 0  # pb.Compression: each batch compressed if it shrinks enough


class MigrationCancelled(Exception):
    pass


class MigrationGaveUp(Exception):
    """Did not converge within the timeout or iteration limit (strategy: cancel)."""


class Migration:
    def __init__(
        self,
        request: MigrationRequest,
        layout: MemoryLayout,
        guest: GuestControl | QmpGuest | None = None,
        dirty_log: DirtyLog | None = None,
        migration_id: str | None = None,
        security: Security = INSECURE,
        pause_records: PauseRecords | None = None,
        chunk_span_factor: int = DEFAULT_CHUNK_SPAN_FACTOR,
    ) -> None:
        self.migration_id = migration_id or uuid.uuid4().hex
        self.chunk_span_factor = chunk_span_factor  # the operator's (SenderConfig), for the transfer pool
        self._log = for_migration(log, self.migration_id)
        self.request = request
        self.security = security
        self.layout = layout
        self.guest: GuestControl | QmpGuest = guest or GuestControl(self.migration_id)
        self.dirty_log = dirty_log
        self.pause_records = pause_records or PauseRecords(None)
        self.state = State.PENDING
        self.phase = "setup"
        self.error = ""
        self.stats = MigrationStats(layout.total_bytes, request.connections)
        self.policy = ConvergencePolicy(
            downtime_ms=request.downtime_ms,
            timeout_ms=request.timeout_ms,
            force_on_timeout=request.force_on_timeout,
            max_iterations=request.max_iterations,
            available_bandwidth=request.available_bandwidth,
            connections=request.connections,
            max_bandwidth=request.max_bandwidth,
        )
        self.destination_regions: list[pb.DestinationRegion] = []
        self.budget = WireBudget(request.max_bandwidth)  # the bandwidth cap, changeable while it runs
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._cancel_requested = False
        self._timed_out = False  # a one-pass migration ran past timeout_ms
        self._verify_seconds: float | None = None  # the digests' share of the downtime estimate
        self.steering = PrecopySteering(
            self.migration_id,
            self._log,
            request.downtime_ms,
            request.auto_converge,
            request.stall_timeout_ms,
            self.pause_records,
        )
        self._started = time.monotonic()
        self._outcome_counted = False  # metrics.migration_finished done (once, whatever happens)
        self._round_trip = 0.0
        self._chunk_bytes = 0
        self._heartbeat_seconds = 0.0
        self._on_final: Callable[[Migration], None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"migration-{self.migration_id[:8]}", daemon=True)

    @property
    def live(self) -> bool:
        return self.dirty_log is not None

    # -- control -----------------------------------------------------------------

    def start(self, on_exit: Callable[[Migration], None], on_final: Callable[[Migration], None] | None = None) -> None:
        """Run the migration in its thread; on_exit is called once that thread is done
        with everything (final state set, connection processes and files released);
        on_final as soon as the state is final, before the last clean-up: from then on
        the migration touches neither the guest nor its dirty maps."""
        self._on_exit = on_exit
        self._on_final = on_final
        metrics.migration_started(self.migration_id, self.layout.total_bytes)
        metrics.bandwidth_cap_set(self.migration_id, self.budget.rate)
        self._thread.start()

    def cancel(self) -> None:
        with self._changed:
            if self.state in FINAL_STATES:
                return
            self._cancel_requested = True
        self._stop.set()

    def set_limits(
        self, downtime_ms: int | None = None, max_bandwidth: float | None = None, max_iterations: int | None = None
    ) -> None:
        """New limits while it runs (SetMigrationLimits): the cap at once, the downtime target
        and the iteration limit at the next decision (within one iteration), and the
        downtime estimate is worked out again with them now."""
        with self._changed:
            changes = {
                name: value
                for name, value in (("downtime_ms", downtime_ms), ("max_iterations", max_iterations))
                if value is not None
            }
            if max_bandwidth is not None:
                changes["max_bandwidth"] = max_bandwidth
                self.budget.set_rate(max_bandwidth)
                metrics.bandwidth_cap_set(self.migration_id, max_bandwidth)
            self.policy = dataclasses.replace(self.policy, **changes)
            if downtime_ms is not None:
                self.steering.downtime_ms = downtime_ms
            self._log.info(
                "migration %s: limits now: downtime %d ms, bandwidth cap %s, at most %d iterations",
                self.migration_id,
                self.policy.downtime_ms,
                f"{format_bytes(self.budget.rate)}/s" if self.budget.rate else "none",
                self.policy.max_iterations,
            )
            self._estimate_again()
            self._changed.notify_all()

    def _estimate_again(self) -> None:
        """The downtime estimate with the limits in force (called under the lock)."""
        if not self.live or not self.stats.iterations:
            return
        self.stats.expected_downtime_ms = self._estimate(self.stats.remaining_bytes)[0]

    def _estimate(self, remaining: int) -> tuple[int, float]:
        """(expected downtime ms, bandwidth used) for pausing with `remaining` dirty bytes,
        with the limits in force; the statistics keep the bandwidth and where it came from."""
        latest = self.stats.iterations[-1]
        sample = latest.counters if latest.index and latest.counters.chunk_bytes else self.stats.totals
        if self._verify_seconds is None:
            self._verify_seconds = expected_verify_seconds(self.layout) if self.request.verify else 0.0
        expected, bandwidth, source = self.policy.expected_downtime_ms(
            remaining, sample, self._chunk_bytes, self._round_trip, self._verify_seconds
        )
        self.stats.bandwidth, self.stats.bandwidth_source = bandwidth, source
        return expected, bandwidth

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def status(self) -> pb.MigrationStatus:
        with self._changed:
            try:
                stats, iterations = self.stats.to_proto(), self.stats.iterations_proto()
                if self.live:
                    stats.dirty_rate_bytes_per_second = self.steering.dirty_rate.value
                    stats.throttle_percent = self.steering.throttle_percent
                stats.iteration_processed_bytes = iteration_progress(stats, iterations)
                iterations = iterations[-STATUS_ITERATIONS:]
            except Exception:  # a bad figure must not break GetMigration and ListMigrations
                self._log.exception("migration %s: statistics cannot be reported", self.migration_id)
                stats, iterations = pb.MigrationStats(), []
            return pb.MigrationStatus(
                migration_id=self.migration_id,
                state=self.state,
                error=self.error,
                stats=stats,
                destination_regions=self.destination_regions,
                destination=self.request.destination,
                skip_zero_pages=self.request.skip_zero_pages,
                page_size=self.request.page_size,
                iterations=iterations,
                phase=self.phase,
                live=self.live,
                guest_state=self.guest.state,
                guest_run_state=self.guest.run_state,
                convergence_forecast=self.steering.forecast,
                downtime_limit_ms=self.policy.downtime_ms,
                max_bandwidth_bytes_per_second=self.budget.rate,
                max_iterations=self.policy.max_iterations,
                compression=self.request.compression,
            )

    def wait_for_change(self, last: tuple[int, str, int], timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._progress_key() != last, timeout)

    def progress_key(self) -> tuple[int, str, int]:
        with self._changed:
            return self._progress_key()

    def _progress_key(self) -> tuple[int, str, int]:
        return self.state, self.phase, len(self.stats.iterations)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def _set(self, state: int | None = None, phase: str | None = None, error: str | None = None) -> None:
        with self._changed:
            if state is not None:
                self.state = state
            if phase is not None:
                self.phase = phase
                metrics.set_phase(self.migration_id, phase)
            if error is not None:
                self.error = error
            self._changed.notify_all()
        if state in FINAL_STATES:
            self._final_reached()

    def _final_reached(self) -> None:
        on_final, self._on_final = self._on_final, None
        if on_final is not None:
            on_final(self)

    # -- the run -----------------------------------------------------------------

    def _run(self) -> None:
        """The migration thread: whatever goes wrong, even while finishing, the
        migration ends in a final state with its reason (the registry never holds a
        migration whose thread died RUNNING)."""
        try:
            self._attempt()
        except BaseException as error:
            self._log.exception("migration %s: failed while finishing", self.migration_id)
            with self._changed:
                if self.state not in FINAL_STATES:
                    self.state, self.error = State.FAILED, f"failed while finishing: {type(error).__name__}: {error}"
                self.phase = "done"
                self._changed.notify_all()
            if not self._outcome_counted:
                outcome = State.Name(self.state).lower()
                metrics.migration_finished(self.migration_id, outcome, time.monotonic() - self._started, None, None)
        finally:
            self._final_reached()  # once, whichever way the thread ends
            self._on_exit(self)

    def _attempt(self) -> None:
        self._set(state=State.RUNNING)
        control = self.security.channel(self.request.destination, channel_options(self.request.max_batch_bytes))
        receiver = pb_grpc.ReceiverStub(control)
        token = ""
        pool: TransferPool | None = None
        deadline = self._one_pass_deadline()
        try:
            if self._cancel_requested:
                raise MigrationCancelled()
            # Connection processes start while the receiver prepares the session.
            pool = TransferPool(
                self.request.connections,
                self.stats,
                self._stop,
                self.layout.split_at_regions,
                {"migration_id": self.migration_id},
                budget=self.budget,
                span_factor=self.chunk_span_factor,
            )
            token, chunk_bytes, data_ports = self._prepare(receiver)
            pool.begin(self._connection_specs(token, chunk_bytes, data_ports))
            pause_started = self._precopy(pool) if self.live else self._stop_and_copy(pool)
            # Digest while the streams are still open: an idle receiver session expires.
            digest, digest_seconds = self._digest()
            pool.close()
            if (error := pool.first_error()) is not None:
                raise error
            pool = None
            self._complete(receiver, token, digest, digest_seconds)
            self.pause_records.remove(self.migration_id)  # paused on purpose: the destination takes over
            if pause_started is not None:
                self.stats.downtime_ms = int((time.monotonic() - pause_started) * 1000)
            self._finish(State.COMPLETED)
        except (MigrationCancelled, TransferStopped):
            if pool is not None:
                pool.close()  # every worker has recorded its error (or none) once this returns
            error = pool.first_error() if pool is not None else None
            if self._timed_out and not self._cancel_requested:
                self._fail(
                    receiver,
                    token,
                    pool,
                    State.FAILED,
                    f"did not finish within the migration timeout of {self.request.timeout_ms} ms "
                    "(one pass: no switchover to force)",
                )
            elif self._cancel_requested or error is None:
                self._fail(receiver, token, pool, State.CANCELLED, "cancelled by the client")
            else:
                self._fail(receiver, token, pool, State.FAILED, describe_failure(error, self.request.destination))
        except MigrationGaveUp as gave_up:
            self._fail(receiver, token, pool, State.FAILED, str(gave_up))
        except Exception as error:
            self._fail(receiver, token, pool, State.FAILED, describe_failure(error, self.request.destination))
        finally:
            self.steering.release()
            if deadline is not None:
                deadline.cancel()
            control.close()
            self._release_resources()

    def _release_resources(self) -> None:
        """What the migration held on the source host, let go whatever the outcome."""
        self.layout.close()
        if self.dirty_log is not None:
            self.dirty_log.close()
        self.guest.close()
        # gRPC calls and generators leave reference cycles holding buffers and
        # frames; collect them, then hand the freed memory back to the system, so a
        # long-lived sender does not grow with the number of migrations.
        gc.collect()
        release_free_memory()

    def _one_pass_deadline(self) -> threading.Timer | None:
        """timeout_ms on a migration without dirty logs: it ends FAILED (guest resumed) when
        the one pass is not done in time. Live migrations apply it between iterations."""
        if self.live or not self.request.timeout_ms:
            return None
        timer = threading.Timer(self.request.timeout_ms / 1000, self._time_out)
        timer.daemon = True
        timer.start()
        return timer

    def _time_out(self) -> None:
        with self._changed:
            if self.state in FINAL_STATES:
                return
            self._timed_out = True
        self._stop.set()

    def _connection_specs(self, token: str, chunk_bytes: int, data_ports: list[int]) -> list[ConnectionSpec]:
        """One spec per connection: stream i goes to data port i % len (or the destination itself)."""
        regions = source_regions(self.layout)
        host = self.request.destination.rpartition(":")[0]
        read_ahead = read_ahead_pays(self.request.connections, self.request.compression != pb.COMPRESSION_NONE)
        return [
            ConnectionSpec(
                index=index,
                endpoint=f"{host}:{data_ports[index % len(data_ports)]}" if data_ports else self.request.destination,
                security=self.security,
                session_token=token,
                regions=regions,
                page_size=self.request.page_size,
                chunk_bytes=chunk_bytes,
                skip_zero_pages=self.request.skip_zero_pages,
                compression=self.request.compression,
                heartbeat_seconds=self._heartbeat_seconds,
                read_ahead=read_ahead,
            )
            for index in range(self.request.connections)
        ]

    def _prepare(self, receiver: pb_grpc.ReceiverStub) -> tuple[str, int, list[int]]:
        started = time.monotonic()
        call = receiver.PrepareMigration.future(
            pb.PrepareMigrationRequest(
                layout=pb.MemoryRangeTable(ranges=to_pb_ranges(self.layout.table.ranges)),
                page_size=self.request.page_size,
                migration_id=self.migration_id,
                connections=self.request.connections,
            ),
            timeout=CONTROL_TIMEOUT_SECONDS,
        )
        # Cancellable: a receiver that accepts connections but never answers must not
        # hold a cancel for the whole control timeout.
        answered = threading.Event()
        finished_at: list[float] = []
        call.add_done_callback(lambda _call: (finished_at.append(time.monotonic()), answered.set()))
        while not answered.wait(0.05):
            if self._cancel_requested:
                call.cancel()
                raise MigrationCancelled()
        response = call.result()
        self._round_trip = finished_at[0] - started
        self.stats.setup_done()
        with self._changed:
            self.destination_regions = list(response.destination_regions)
        batch_bytes = min(self.request.max_batch_bytes, response.max_batch_bytes or DEFAULT_MAX_BATCH_BYTES)
        page_size = self.request.page_size
        chunk_bytes = align_down(batch_bytes, page_size) if batch_bytes >= page_size else batch_bytes
        self._chunk_bytes = chunk_bytes
        # A quarter of the receiver's idle timeout: a long all-zero scan never looks like a gone sender.
        self._heartbeat_seconds = response.idle_timeout_ms / 4000
        self._log.info(
            "migration %s: session prepared on %s, %d connections, chunks of %s, live=%s",
            self.migration_id,
            self.request.destination,
            self.request.connections,
            format_bytes(chunk_bytes),
            self.live,
        )
        return response.session_token, chunk_bytes, list(response.data_ports)

    def _stop_and_copy(self, pool: TransferPool) -> float | None:
        """One pass over all memory; the guest (if known) is paused for all of it."""
        pause_started = None
        if self.guest.can_pause:
            self._set(phase="switchover")
            pause_started = time.monotonic()
            self._pause_guest()
        else:
            self._set(phase="precopy")
        self.stats.begin_iteration(
            self.layout.total_bytes, self.layout.total_bytes // self.request.page_size, final=pause_started is not None
        )
        pool.send(self.layout.table.ranges, zero_records=False)
        self.stats.end_iteration()
        return pause_started

    def _precopy(self, pool: TransferPool) -> float:
        """Iterate until the downtime estimate fits, then pause and send the rest."""
        assert self.dirty_log is not None
        self._set(phase="precopy")
        self.dirty_log.clear()  # everything is sent in iteration 0; writes from now on are caught
        self.steering.start(self.guest)
        self.stats.begin_iteration(self.layout.total_bytes, self.layout.total_bytes // self.request.page_size)
        pool.send(self.layout.table.ranges, zero_records=False)
        expected = self._end_iteration()
        while True:
            elapsed_ms = int((time.monotonic() - self._started) * 1000)
            remaining = self.stats.remaining_bytes
            decision = self.policy.decide(len(self.stats.iterations), remaining, expected, elapsed_ms)
            stalled = self.steering.stalled(remaining)
            if stalled and decision is Decision.CONTINUE:
                decision = Decision.FORCE_SWITCHOVER if self.request.force_on_timeout else Decision.GIVE_UP
            if decision is Decision.GIVE_UP:
                why = f"stalled: no new low of dirty bytes for {self.request.stall_timeout_ms} ms; " if stalled else ""
                raise MigrationGaveUp(
                    f"did not converge: {why}expected downtime {expected} ms > target {self.request.downtime_ms} ms "
                    f"after {len(self.stats.iterations)} iterations and {elapsed_ms} ms"
                )
            if decision in (Decision.SWITCHOVER, Decision.FORCE_SWITCHOVER):
                if decision is Decision.FORCE_SWITCHOVER:
                    self._log.warning(
                        "migration %s: forcing switchover, expected downtime %d ms", self.migration_id, expected
                    )
                break
            dirty = self.dirty_log.collect()
            dirty_bytes = sum(r.length for r in dirty)
            self.steering.collected(dirty_bytes)
            self.stats.begin_iteration(dirty_bytes, dirty_bytes // self.request.page_size)
            pool.send(dirty, zero_records=True)
            expected = self._end_iteration()
        self.steering.release()  # the pause is the migration's: no duty cycle may continue the guest
        self._set(phase="switchover")
        pause_started = time.monotonic()
        self._pause_guest()
        final = self.dirty_log.collect()
        final_bytes = sum(r.length for r in final)
        self.stats.begin_iteration(final_bytes, final_bytes // self.request.page_size, final=True)
        pool.send(final, zero_records=True)
        self.stats.end_iteration(0, expected)  # the estimate the switchover was decided on
        return pause_started

    def _pause_guest(self) -> None:
        """Record how to resume the guest, then pause it: a sender that dies while it is
        paused leaves the record for the next sender or `livemig guest resume`."""
        record = self.guest.pause_record()
        if record is not None:
            self.pause_records.write(record)
        self.guest.pause()

    def _end_iteration(self) -> int:
        """Close the iteration with the remaining dirty bytes and the downtime estimate."""
        assert self.dirty_log is not None
        remaining = self.dirty_log.dirty_bytes()
        expected, bandwidth = self._estimate(remaining)
        iteration = self.stats.end_iteration(remaining, expected)
        metrics.iteration_ended(self.migration_id, remaining, self.steering.dirty_rate.value, expected)
        fixed = min((i.seconds() for i in self.stats.iterations[1:] if i.ended is not None), default=0.0)
        self.steering.iteration_ended(
            iteration.index, bandwidth, fixed, 2 * self._round_trip + (self._verify_seconds or 0.0)
        )
        if not self.steering.log_now():
            self._set()
            return expected
        self._log.info(
            "migration %s: iteration %d sent %s of %s dirty in %.0f ms; %s dirty, expected downtime %d ms at %s/s (%s)",
            self.migration_id,
            iteration.index,
            format_bytes(iteration.counters.transmitted_bytes),
            format_bytes(iteration.dirty_bytes),
            iteration.seconds() * 1000,
            format_bytes(remaining),
            expected,
            format_bytes(bandwidth),
            self.stats.bandwidth_source,
        )
        self._set()  # wake watchers: a new iteration is in the statistics
        return expected

    def _digest(self) -> tuple[bytes, float]:
        if not self.request.verify:
            return b"", 0.0
        self._set(phase="completing")
        started = time.monotonic()
        return memory_digest(self.layout), time.monotonic() - started

    def _complete(self, receiver: pb_grpc.ReceiverStub, token: str, digest: bytes, digest_seconds: float) -> None:
        if self._cancel_requested:
            raise MigrationCancelled()
        self._set(phase="completing")
        started = time.monotonic()
        response = receiver.CompleteMigration(
            pb.CompleteMigrationRequest(
                session_token=token,
                transmitted_bytes=self.stats.totals.transmitted_bytes,
                batches=self.stats.totals.batches,
                digest=digest,
            ),
            timeout=COMPLETE_TIMEOUT_SECONDS,
        )
        if self.request.verify:
            if not response.verified:
                raise RuntimeError("receiver did not verify the destination digest")
            self.stats.verify_ms = int((time.monotonic() - started + digest_seconds) * 1000)
        self.stats.verified = response.verified

    def _fail(
        self, receiver: pb_grpc.ReceiverStub, token: str, pool: TransferPool | None, state: int, reason: str
    ) -> None:
        self._stop.set()
        if pool is not None:
            pool.close()
        self.guest.resume()
        if self.guest.state != "unknown":  # resumed, or never paused; a failed resume keeps its record
            self.pause_records.remove(self.migration_id)
        if state == State.FAILED:
            self._log.error("migration %s failed: %s", self.migration_id, reason)
        if token:
            try:
                receiver.AbortMigration(
                    pb.AbortMigrationRequest(session_token=token, reason=reason), timeout=ABORT_TIMEOUT_SECONDS
                )
            except grpc.RpcError as error:
                self._log.warning("migration %s: abort on receiver failed: %s", self.migration_id, error.details())
        self._finish(state, reason)

    def _finish(self, state: int, error: str = "") -> None:
        self.stats.ended()
        self._set(state=state, phase="done", error=error)
        snapshot = self.stats.to_proto()
        completed = state == State.COMPLETED
        metrics.migration_finished(
            self.migration_id,
            State.Name(state).lower(),
            snapshot.duration_ms / 1000,
            self.stats.throughput() if completed else None,
            snapshot.downtime_ms / 1000 if completed and (self.live or self.guest.can_pause) else None,
        )
        self._outcome_counted = True
        self._log.info("migration %s %s %s", self.migration_id, State.Name(state), error)


def iteration_progress(stats: pb.MigrationStats, iterations: list[pb.IterationStats]) -> int:
    """Bytes processed of the current iteration (all memory in iteration 0, else its dirty pages)."""
    if len(iterations) <= 1:
        return stats.processed_bytes
    before = stats.total_bytes + sum(i.dirty_bytes for i in iterations[1:-1])
    return max(0, min(iterations[-1].dirty_bytes, stats.processed_bytes - before))

"""One migration: the state machine and the policy around the connection workers.

PENDING -> RUNNING -> COMPLETED | FAILED | CANCELLED. A migration is COMPLETED
only after every batch was acknowledged and the receiver accepted the totals
(and, with verify, the digest); anything else ends FAILED with a reason, and the
receiver's half-written destination is aborted.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from livemig.common.digest import memory_digest
from livemig.common.guest_memory import MemoryLayout
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.ranges import align_down
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES, channel_options
from livemig.common.wire import to_pb_ranges
from livemig.sender import metrics
from livemig.sender.stats import MigrationStats
from livemig.sender.worker import ConnectionWorker, TransferPlan

log = logging.getLogger("livemig.sender")

State = pb.MigrationState
FINAL_STATES = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED})
CONTROL_TIMEOUT_SECONDS = 15.0
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


class MigrationCancelled(Exception):
    pass


class Migration:
    def __init__(self, request: MigrationRequest, layout: MemoryLayout) -> None:
        self.migration_id = uuid.uuid4().hex
        self.request = request
        self.layout = layout
        self.state = State.PENDING
        self.error = ""
        self.stats = MigrationStats(layout.total_bytes, request.connections)
        self.destination_regions: list[pb.DestinationRegion] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._cancel_requested = False
        self._thread = threading.Thread(target=self._run, name=f"migration-{self.migration_id[:8]}", daemon=True)

    # -- control -----------------------------------------------------------------

    def start(self, on_final: Callable[[Migration], None]) -> None:
        self._on_final = on_final
        metrics.ACTIVE_MIGRATIONS.inc()
        self._thread.start()

    def cancel(self) -> None:
        with self._changed:
            if self.state in FINAL_STATES:
                return
            self._cancel_requested = True
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def status(self) -> pb.MigrationStatus:
        with self._changed:
            return pb.MigrationStatus(
                migration_id=self.migration_id,
                state=self.state,
                error=self.error,
                stats=self.stats.to_proto(),
                destination_regions=self.destination_regions,
                destination=self.request.destination,
                skip_zero_pages=self.request.skip_zero_pages,
                page_size=self.request.page_size,
            )

    def wait_for_change(self, last_state: int, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.state != last_state, timeout)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def _set_state(self, state: int, error: str = "") -> None:
        with self._changed:
            self.state = state
            self.error = error
            self._changed.notify_all()

    # -- the run -----------------------------------------------------------------

    def _run(self) -> None:
        self._set_state(State.RUNNING)
        control = grpc.insecure_channel(self.request.destination, options=channel_options(self.request.max_batch_bytes))
        receiver = pb_grpc.ReceiverStub(control)
        token = ""
        try:
            token, chunk_bytes = self._prepare(receiver)
            self._transfer(token, chunk_bytes)
            self._complete(receiver, token)
            self._finish(State.COMPLETED)
        except MigrationCancelled:
            self._abort_receiver(receiver, token, "cancelled by the client")
            self._finish(State.CANCELLED, "cancelled by the client")
        except Exception as error:
            reason = describe_failure(error, self.request.destination)
            log.error("migration %s failed: %s", self.migration_id, reason)
            self._abort_receiver(receiver, token, reason)
            self._finish(State.FAILED, reason)
        finally:
            control.close()
            self.layout.close()

    def _prepare(self, receiver: pb_grpc.ReceiverStub) -> tuple[str, int]:
        response = receiver.PrepareMigration(
            pb.PrepareMigrationRequest(
                layout=pb.MemoryRangeTable(ranges=to_pb_ranges(self.layout.table.ranges)),
                page_size=self.request.page_size,
                migration_id=self.migration_id,
            ),
            timeout=CONTROL_TIMEOUT_SECONDS,
        )
        with self._changed:
            self.destination_regions = list(response.destination_regions)
        batch_bytes = min(self.request.max_batch_bytes, response.max_batch_bytes or DEFAULT_MAX_BATCH_BYTES)
        page_size = self.request.page_size
        chunk_bytes = align_down(batch_bytes, page_size) if batch_bytes >= page_size else batch_bytes
        log.info(
            "migration %s: session prepared on %s, %d connections, chunks of %d bytes",
            self.migration_id,
            self.request.destination,
            self.request.connections,
            chunk_bytes,
        )
        return response.session_token, chunk_bytes

    def _transfer(self, token: str, chunk_bytes: int) -> None:
        plan = TransferPlan(token, self.layout, self.request.page_size, chunk_bytes, self.request.skip_zero_pages)
        connections = self.request.connections
        chunks: queue.Queue = queue.Queue(maxsize=2 * connections)
        batch_ids = itertools.count(1)
        channels = [
            grpc.insecure_channel(self.request.destination, options=channel_options(chunk_bytes, index))
            for index in range(connections)
        ]
        workers = [
            ConnectionWorker(i, channel, plan, chunks, self.stats, batch_ids, self._stop)
            for i, channel in enumerate(channels)
        ]
        threads = [threading.Thread(target=w.run, name=f"conn-{i}", daemon=True) for i, w in enumerate(workers)]
        self.stats.transfer_started()
        for thread in threads:
            thread.start()
        try:
            for table in self.layout.table.partition(chunk_bytes):
                if not self._put(chunks, table.ranges[0]):
                    break
            for _ in workers:
                if not self._put(chunks, None):
                    break
        except BaseException:
            self._stop.set()
            raise
        finally:
            for thread in threads:
                thread.join()
            for channel in channels:
                channel.close()
            self.stats.transfer_ended()
        if self._cancel_requested:
            raise MigrationCancelled()
        errors = [w.error for w in workers if w.error is not None]
        if errors:
            raise errors[0]

    def _put(self, chunks: queue.Queue, item: object) -> bool:
        while not self._stop.is_set():
            try:
                chunks.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _complete(self, receiver: pb_grpc.ReceiverStub, token: str) -> None:
        if self._cancel_requested:
            raise MigrationCancelled()
        digest = memory_digest(self.layout) if self.request.verify else b""
        response = receiver.CompleteMigration(
            pb.CompleteMigrationRequest(
                session_token=token,
                transmitted_bytes=self.stats.transmitted_bytes,
                batches=self.stats.batches,
                digest=digest,
            ),
            timeout=COMPLETE_TIMEOUT_SECONDS,
        )
        if self.request.verify and not response.verified:
            raise RuntimeError("receiver did not verify the destination digest")
        self.stats.verified = response.verified

    def _abort_receiver(self, receiver: pb_grpc.ReceiverStub, token: str, reason: str) -> None:
        if not token:
            return
        try:
            receiver.AbortMigration(
                pb.AbortMigrationRequest(session_token=token, reason=reason), timeout=CONTROL_TIMEOUT_SECONDS
            )
        except grpc.RpcError as error:
            log.warning("migration %s: abort on receiver failed: %s", self.migration_id, error.details())

    def _finish(self, state: int, error: str = "") -> None:
        self.stats.ended()
        self._set_state(state, error)
        metrics.ACTIVE_MIGRATIONS.dec()
        metrics.MIGRATIONS.labels(State.Name(state).lower()).inc()
        metrics.DURATION.observe(self.stats.to_proto().duration_ms / 1000)
        if state == State.COMPLETED:
            metrics.THROUGHPUT.set(self.stats.throughput())
        log.info("migration %s %s %s", self.migration_id, State.Name(state), error)
        self._on_final(self)


def describe_failure(error: BaseException, destination: str) -> str:
    """One human sentence for the status's error field."""
    if isinstance(error, grpc.RpcError):
        code = error.code()
        details = error.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            return f"receiver at {destination} is unavailable: {details}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"receiver at {destination} did not answer in time: {details}"
        return f"receiver refused ({code.name}): {details}"
    return f"{type(error).__name__}: {error}"

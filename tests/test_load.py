"""Several migrations at once, the one too many refused, and a soak without leaks."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from livemig.cli.images import make_image
from livemig.cli.processes import ServiceProcess, process_tree, rss_without_shmem_bytes
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.ranges import MemoryRange
from livemig.common.stream_activity import QUIET_SECONDS
from livemig.common.transport import channel_options
from livemig.common.wire import encode_batch
from tests.helpers import assert_destination_equals_source, migrate
from tests.test_bad_input import prepare

pytestmark = pytest.mark.e2e
MIB = 1 << 20
# How long a test waits for data-plane processes to give their buffers back: a data
# worker's quiet spell, then the 20 s these tests always allowed a loaded host.
TRIM_WAIT_SECONDS = QUIET_SECONDS + 20


def _status(pid: int) -> dict[str, str]:
    return dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)


def descendants(pid: int) -> list[int]:
    """Child processes, recursively (the receiver's data workers, the sender's fork server)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return [c for child in children for c in (child, *descendants(child))]


def resources(pid: int) -> dict[str, int]:
    """The process's descriptors and threads, and the RSS of it and its long-lived children
    (a connection process alive at the moment of sampling is counted too: noise the slope absorbs)."""
    rss = 0
    for member in (pid, *descendants(pid)):
        try:
            rss += int(_status(member)["VmRSS"].split()[0])
        except (FileNotFoundError, KeyError, ProcessLookupError):
            continue  # ended meanwhile, or a zombie
    return {
        "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())),
        "threads": int(_status(pid)["Threads"].strip()),
        "rss_kib": rss,
    }


@pytest.fixture
def services(shm_dir: Path):
    with (
        ServiceProcess("receiver", ["--memory-dir", str(shm_dir / "dst"), "--max-sessions", "4"]) as rx,
        ServiceProcess("sender", []) as tx,
    ):
        yield tx, rx


def test_four_guests_at_once_and_the_fifth_refused(services, shm_dir):
    tx, rx = services
    guests = []
    for index in range(4):
        image = shm_dir / f"guest{index}.img"
        make_image(image, 48 * MIB, 0.6, seed=index)
        guests.append(image)
    results: dict[int, pb.MigrationStatus] = {}

    def run(index: int) -> None:
        results[index] = migrate(
            tx.address, rx.address, [(0, guests[index])], connections=2, skip_zero_pages=True, verify=True
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, image in enumerate(guests):
        assert results[index].state == pb.COMPLETED, results[index].error
        assert_destination_equals_source(results[index], [(0, image)])
    # Fill every slot, then one more migration: refused cleanly, with the reason.
    with grpc.insecure_channel(rx.address) as channel:
        stub = pb_grpc.ReceiverStub(channel)
        held = [prepare(stub, [MemoryRange(0, MIB)]) for _ in range(4)]
        status = migrate(tx.address, rx.address, [(0, guests[0])])
        assert status.state == pb.FAILED
        assert "RESOURCE_EXHAUSTED" in status.error and "limit of 4 concurrent migrations" in status.error
        for session in held:
            stub.AbortMigration(pb.AbortMigrationRequest(session_token=session.session_token))
    assert migrate(tx.address, rx.address, [(0, guests[0])]).state == pb.COMPLETED


SOAK_WARM_UP = 40  # thread pools and allocator arenas reach their working size (measured)
SOAK_MIGRATIONS = 80
# The leak this guards against (glibc arenas, before malloc_trim) grew the sender by
# about 1.1 MiB per migration (117 -> 174 MiB in 50). Allocator noise on a loaded
# 2-core machine moved single samples by 10-20 MiB, but the robust slope over 80
# samples by at most 0.22 MiB per migration (RECORDED_RSS_MIB below).
MAX_GROWTH_KIB_PER_MIGRATION = 512
ARENA_LEAK_MIB_PER_MIGRATION = 1.14

# The sender's RSS (MiB) after each of migrations 41-200 of this soak, recorded on
# this 2-core machine under load when megabyte frames still lived in the sender's
# threads (before connection processes) and its glibc arenas made the noise: steps
# of 4-12 MiB up and down around a slow plateau. The soak's detector is checked
# against it below; today's sender is flat (about 58 MiB throughout).
RECORDED_RSS_MIB = (
    121, 121, 121, 117, 117, 121, 121, 113, 125, 117, 125, 121, 125, 121, 121, 125, 125, 125, 125, 126,
    126, 126, 126, 118, 118, 122, 126, 122, 121, 122, 125, 122, 122, 122, 114, 114, 110, 110, 113, 113,
    113, 117, 113, 113, 114, 114, 114, 114, 118, 110, 118, 118, 114, 122, 118, 122, 122, 122, 118, 122,
    122, 126, 122, 126, 126, 126, 126, 130, 130, 130, 130, 134, 130, 122, 122, 122, 126, 122, 126, 130,
    130, 126, 126, 126, 122, 122, 126, 122, 122, 122, 122, 122, 122, 130, 130, 130, 130, 130, 134, 135,
    131, 127, 131, 127, 130, 130, 123, 123, 126, 123, 131, 135, 131, 131, 135, 131, 123, 123, 123, 123,
    127, 123, 127, 130, 134, 131, 131, 134, 123, 127, 127, 127, 127, 131, 127, 127, 131, 127, 123, 127,
    127, 127, 130, 135, 131, 139, 139, 135, 139, 139, 135, 135, 127, 135, 135, 139, 131, 131, 135, 135,
)  # fmt: skip


def theil_sen_slope(samples: list[int]) -> float:
    """The median of the slopes between every pair of samples: a trend that a few
    outliers or one step of arena growth cannot drag (unlike two peaks or a fit)."""
    values = np.asarray(samples, dtype=float)
    first, second = np.triu_indices(len(values), k=1)
    return float(np.median((values[second] - values[first]) / (second - first)))


def soak(
    tx: ServiceProcess, rx: ServiceProcess, image: Path, warm_up: int = SOAK_WARM_UP, count: int = SOAK_MIGRATIONS
) -> tuple[dict, dict, dict[str, float]]:
    """Warm up, then migrate SOAK_MIGRATIONS times sampling RSS after each; returns the
    resources before and after and each process's RSS slope in KiB per migration."""

    def one() -> None:
        status = migrate(tx.address, rx.address, [(0, image)], connections=2, skip_zero_pages=True)
        assert status.state == pb.COMPLETED, status.error
        for region in status.destination_regions:
            Path(region.path).unlink()

    for _ in range(warm_up):
        one()
    time.sleep(1)  # per-stream watchdog threads wind down
    before = {role: resources(p.pid) for role, p in (("sender", tx), ("receiver", rx))}
    rss: dict[str, list[int]] = {"sender": [], "receiver": []}
    for _ in range(count):
        one()
        for role, process in (("sender", tx), ("receiver", rx)):
            rss[role].append(resources(process.pid)["rss_kib"])
    time.sleep(1)
    after = {role: resources(p.pid) for role, p in (("sender", tx), ("receiver", rx))}
    return before, after, {role: theil_sen_slope(samples) for role, samples in rss.items()}


def test_soak_migrations_leak_nothing(services, shm_dir):
    tx, rx = services
    image = shm_dir / "guest.img"
    make_image(image, 4 * MIB, 0.5)
    before, after, slopes = soak(tx, rx, image)
    print(f"\nsoak, {SOAK_MIGRATIONS} migrations: before {before}, after {after}, RSS KiB/migration {slopes}")
    for role in before:
        assert after[role]["fds"] <= before[role]["fds"] + 2, role
        assert after[role]["threads"] <= before[role]["threads"] + 2, role
        assert slopes[role] <= MAX_GROWTH_KIB_PER_MIGRATION, f"{role} RSS grows {slopes[role]:.0f} KiB per migration"


def test_soak_slope_tells_the_arena_leak_from_allocator_noise():
    """The soak's detector on recorded allocator noise: every window of SOAK_MIGRATIONS
    samples passes as it is and fails with the arena leak's growth added to it."""
    assert len(RECORDED_RSS_MIB) == 160
    growth = ARENA_LEAK_MIB_PER_MIGRATION * np.arange(SOAK_MIGRATIONS)
    for start in range(len(RECORDED_RSS_MIB) - SOAK_MIGRATIONS + 1):
        window = np.array(RECORDED_RSS_MIB[start : start + SOAK_MIGRATIONS], dtype=float) * 1024
        assert theil_sen_slope(list(window)) <= MAX_GROWTH_KIB_PER_MIGRATION, start
        assert theil_sen_slope(list(window + growth * 1024)) > MAX_GROWTH_KIB_PER_MIGRATION, start


def data_plane_processes(tx: ServiceProcess, rx: ServiceProcess) -> dict[int, int]:
    """Data-plane processes (children of a fork server, not of a service) and their parents."""
    roots = {tx.pid, rx.pid}
    return {
        pid: parent
        for root in roots
        for pid in process_tree(root)[1:]
        if (parent := int(_status(pid)["PPid"])) not in roots
    }


def private_mib(pid: int) -> int:
    return rss_without_shmem_bytes(pid) // MIB


def wait_until_given_back(tx: ServiceProcess, rx: ServiceProcess, deadline: float) -> dict[int, tuple[int, int]]:
    """Every data-plane process's (private MiB, its fork server's) once each is within
    24 MiB of its fork server (its buffers given back), or as they are at `deadline`."""
    while True:
        forked = data_plane_processes(tx, rx)
        after = {pid: (private_mib(pid), private_mib(parent)) for pid, parent in forked.items()}
        if all(mib <= server + 24 for mib, server in after.values()) or time.monotonic() > deadline:
            return after
        time.sleep(0.2)


def test_every_data_plane_process_gives_its_buffers_back_after_a_migration(services, shm_dir):
    """Connection processes and data workers keep freed megabyte blocks for reuse while a
    migration runs (common/allocator.py) and return them when it ends. Each is forked
    from a fork server holding the preloaded code, so once its buffers are back it holds
    little beyond that server: measured here (512 MiB, 4 connections, 8 MiB batches)
    peaks of ~93-110 (connection) and ~160 MiB (data worker) RSS (without shmem) fall to 44-49 MiB
    against the fork server's 51; without the trims they stayed at ~110 and ~160. Both
    hold their buffers for a while after the migration, for the next one (about 40 MiB
    above the fork server per connection process, 100 per data worker)."""
    tx, rx = services
    image = shm_dir / "guest.img"
    make_image(image, 512 * MIB, 1.0, seed=3)

    completed = [0.0]  # when the last migration returned: its streams had closed by then

    def run() -> None:
        status = migrate(tx.address, rx.address, [(0, image)], connections=4)
        completed[0] = time.monotonic()
        assert status.state == pb.COMPLETED, status.error
        assert_destination_equals_source(status, [(0, image)])
        for region in status.destination_regions:
            Path(region.path).unlink()

    run()  # warm-up: pools, threads and imports reach their working size
    peaks: dict[int, int] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            for pid in data_plane_processes(tx, rx):
                peaks[pid] = max(peaks.get(pid, 0), private_mib(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run()
    finally:
        done.set()
        sampler.join()
    # Data workers and connection processes keep their buffers for the next migration for
    # QUIET_SECONDS after their last stream closed (common/stream_activity.py).
    data_workers = set(process_tree(rx.pid)[1:])
    kept = {pid: private_mib(pid) - private_mib(parent) for pid, parent in data_plane_processes(tx, rx).items()}
    print(f"\nkept after the migration, MiB: {kept} (data workers {sorted(data_workers)})")
    if time.monotonic() - completed[0] < QUIET_SECONDS / 2:  # read well inside the spell
        kept_by_workers = [mib for pid, mib in kept.items() if pid in data_workers]
        kept_by_connections = [mib for pid, mib in kept.items() if pid not in data_workers]
        assert max(kept_by_workers, default=0) >= 32, f"the data workers gave their buffers back at the end: {kept}"
        assert max(kept_by_connections, default=0) >= 16, f"the connection processes gave their frames back: {kept}"
    # Both trim once they have had no stream (a connection process: no migration) for
    # QUIET_SECONDS: wait for them (a loaded host may take a while), then judge.
    after = wait_until_given_back(tx, rx, time.monotonic() + TRIM_WAIT_SECONDS)
    print(f"\nRSS without shmem, MiB (peak, after, fork server): { {p: (peaks.get(p), *a) for p, a in after.items()} }")
    assert len(after) >= 4 + 2, "four connection processes and the data workers"
    assert max(peaks.values()) >= 51 + 32, "nothing was held during the migration?"
    for pid, (mib, server) in after.items():
        assert mib <= server + 24, f"process {pid} holds {mib} MiB after the migration (its fork server {server})"


def test_keep_buffers_seconds_reaches_every_data_plane_process(shm_dir):
    """--keep-buffers-seconds 1 on both services: connection processes and data workers
    give their buffers back a second after the migration, well before the default
    QUIET_SECONDS (with that they still hold 40-100 MiB each at QUIET_SECONDS / 2)."""
    image = shm_dir / "guest.img"
    make_image(image, 256 * MIB, 1.0, seed=5)
    receiver_args = ["--memory-dir", str(shm_dir / "dst"), "--keep-buffers-seconds", "1"]
    with (
        ServiceProcess("receiver", receiver_args) as rx,
        ServiceProcess("sender", ["--keep-buffers-seconds", "1"]) as tx,
    ):
        status = migrate(tx.address, rx.address, [(0, image)], connections=2)
        ended = time.monotonic()
        assert status.state == pb.COMPLETED, status.error
        after = wait_until_given_back(tx, rx, ended + QUIET_SECONDS / 2)
        assert len(after) >= 2 + 2, "two connection processes and the data workers"
        for pid, (mib, server) in after.items():
            assert mib <= server + 24, f"process {pid} still holds {mib} MiB (its fork server {server}): {after}"


def test_a_data_worker_gives_back_what_streams_still_held_when_their_session_ended(shm_dir):
    """A cancelled or failed migration's streams may still be receiving when the session
    ends: the buffers they free after the end go back once the worker has had no
    stream for QUIET_SECONDS (common/stream_activity.py). Here 12 streams write 8 MiB
    batches into one worker as fast as they can until the session is aborted under them."""
    streams, batch = 12, 8 * MIB
    args = ["--memory-dir", str(shm_dir / "dst"), "--data-workers", "1", "--max-batch-bytes", "8M"]
    with ServiceProcess("receiver", args) as rx:
        (worker,) = [pid for pid in process_tree(rx.pid)[1:] if int(_status(pid)["PPid"]) != rx.pid]
        fork_server = int(_status(worker)["PPid"])
        channel = grpc.insecure_channel(rx.address)
        stub = pb_grpc.ReceiverStub(channel)
        session = prepare(stub, [MemoryRange(0, streams * batch)])
        token = session.session_token
        acks = [0] * streams
        peak = [0]

        def stream(index: int) -> None:
            def frames():
                for number in range(1, 1000):
                    payload = bytes([number % 255 + 1]) * batch
                    yield encode_batch(token, index * 1000 + number, [MemoryRange(index * batch, batch)], [payload])

            with grpc.insecure_channel(f"127.0.0.1:{session.data_ports[0]}", options=channel_options(batch)) as data:
                transfer = data.stream_stream(
                    "/livemig.v1.Receiver/TransferPages",
                    request_serializer=None,
                    response_deserializer=pb.PageBatchAck.FromString,
                )
                with contextlib.suppress(grpc.RpcError):  # refused once the session is aborted
                    for _ack in transfer(frames(), timeout=60):
                        acks[index] += 1

        threads = [threading.Thread(target=stream, args=(index,)) for index in range(streams)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while min(acks) < 2 and time.monotonic() < deadline:
            peak[0] = max(peak[0], rss_without_shmem_bytes(worker) // MIB)
            time.sleep(0.05)
        stub.AbortMigration(pb.AbortMigrationRequest(session_token=token, reason="test"), timeout=30)
        for thread in threads:
            thread.join(60)
        channel.close()
        server = rss_without_shmem_bytes(fork_server) // MIB
        deadline = time.monotonic() + TRIM_WAIT_SECONDS
        while (after := rss_without_shmem_bytes(worker) // MIB) > server + 24 and time.monotonic() < deadline:
            time.sleep(0.2)
    print(f"\nworker RSS without shmem, MiB: peak {peak[0]}, after {after}, fork server {server}; acks {acks}")
    assert min(acks) >= 2, "every stream wrote before the abort"
    assert peak[0] >= server + 64, "the streams held nothing?"
    assert after <= server + 24, f"the worker holds {after} MiB after its session ended (fork server {server})"


def test_one_gib_over_the_most_connections_completes_and_the_workers_give_their_memory_back(services, shm_dir):
    """128 connections (MAX_CONNECTIONS), the issue's case: 128 connection processes start
    and connect to the receiver's data workers at once, on however few cores, so
    handshakes take seconds. With gRPC's connection timeout at 1 s (it is 5 s now,
    common/transport.py) the same migration run by a script failed 2 times in its first
    3 runs here, every reconnect spent within 2 s, and the failed runs left 0.6-0.9 GB
    in a data worker; under pytest it then passed 3 times in 3 with 1 s, so this test
    proves the scale works rather than catching that regression every time. Each
    data worker must be back near its fork server afterwards (the issue saw 1.3 GB)."""
    tx, rx = services
    image = shm_dir / "guest.img"
    make_image(image, 1024 * MIB, 1.0, seed=11)
    status = migrate(tx.address, rx.address, [(0, image)], connections=128, verify=True)
    assert status.state == pb.COMPLETED, status.error
    assert status.stats.verified
    assert_destination_equals_source(status, [(0, image)])
    for region in status.destination_regions:
        Path(region.path).unlink()

    def mib_held(pid: int) -> int:
        return rss_without_shmem_bytes(pid) // MIB

    workers = {pid: int(_status(pid)["PPid"]) for pid in process_tree(rx.pid)[1:]}
    workers = {pid: server for pid, server in workers.items() if server != rx.pid}
    assert workers, "the receiver's data workers"
    deadline = time.monotonic() + TRIM_WAIT_SECONDS
    while True:
        after = {pid: (mib_held(pid), mib_held(ppid)) for pid, ppid in workers.items()}
        if all(mib <= server + 24 for mib, server in after.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(f"\n128 connections, 1 GiB: {status.stats.duration_ms} ms; data workers (MiB, fork server's): {after}")
    for pid, (mib, server) in after.items():
        assert mib <= server + 24, f"data worker {pid} holds {mib} MiB after the migration (its fork server {server})"

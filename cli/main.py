"""`livemig`: run the services, migrate and follow migrations, demo, benchmark.

Every option can also come from the environment, named after its flag:
LIVEMIG_<COMMAND>_<FLAG> (LIVEMIG_SEND_MIGRATION_SENDER, LIVEMIG_RECEIVER_MEMORY_DIR,
LIVEMIG_MIGRATIONS_LIST_SENDER), LIVEMIG_<FLAG> for the global ones; --help shows each.
Bad values are usage errors (one line, exit 2), never tracebacks.
"""

from __future__ import annotations

import os

# gRPC's C core logs handshake and connection internals to stderr; operators get one
# line from us instead. GRPC_VERBOSITY=debug (or info) in the environment brings them back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import sys
from pathlib import Path

import click
import grpc

from livemig.cli.options import Host, HostPort, name_envvars, tls_options
from livemig.cli.units import Duration, Size
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.stream_activity import MAX_QUIET_SECONDS, MIN_QUIET_SECONDS, QUIET_SECONDS
from livemig.receiver.limits import ReceiverLimits
from livemig.sender import defaults as sender_defaults

MAX_CONNECTIONS = 128
PAGE_SIZE = Size(min_bytes=4096, max_bytes=1 << 30)
MEMORY_SIZE = Size(default_unit="M", min_bytes=4096, max_bytes=1 << 40)
RATIO = click.FloatRange(0.0, 1.0)


def _fail(message: str, code: int = 1) -> None:
    click.echo(message, err=True)
    sys.exit(code)


def _serve(
    role: str, host, listen: str, metrics_address: str | None, metrics_port: int | None, security, on_stop=None
) -> None:
    """Start metrics and the gRPC server; any start-up failure is one line and exit 1."""
    from livemig.common.logs import announce

    bind_host = listen.rpartition(":")[0]
    security.warn_if_plaintext(f"livemig {role}")
    if metrics_port is not None:
        from prometheus_client import start_http_server

        metrics_host = metrics_address if metrics_address is not None else bind_host
        try:
            metrics_server, _thread = start_http_server(metrics_port, addr=metrics_host.strip("[]") or "0.0.0.0")
        except OSError as error:
            _fail(f"livemig {role}: cannot serve metrics on {metrics_host}:{metrics_port}: {error.strerror or error}")
        announce(f"livemig {role} metrics on {metrics_host}:{metrics_server.server_port}")
    try:
        port = host.start(listen, security.server_credentials())
    except (OSError, RuntimeError) as error:
        _fail(f"livemig {role}: cannot listen on {listen} (in use, or not an address of this host): {error}")
    # The ready line: scripts and tests wait for it (and learn the port when it was 0).
    announce(f"livemig {role} listening on {bind_host}:{port}" + (" (plaintext)" if security.insecure else " (TLS)"))
    sys.stdout.flush()
    host.serve_until_signalled(on_stop)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("livemig")
    except PackageNotFoundError:  # pragma: no cover - run from a checkout without install
        return "unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
# The version is looked up when asked for: importlib.metadata costs ~25 ms at import,
# and worker processes import this module again (multiprocessing re-imports __main__).
@click.version_option(
    None, "--version", "-V", package_name="livemig", prog_name="livemig", message="%(prog)s %(version)s"
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Python logging level.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: every line one JSON object, with migration_id where a line concerns a migration.",
)
def cli(log_level: str, log_format: str) -> None:
    """Memory-transfer plane of VM live migration, with zero-page skipping.

    \b
    Exit codes: 0 completed, 1 failed or cancelled, 2 usage, 3 cannot reach the sender,
    130 interrupted (Ctrl-C cancels the migration first). gRPC's own logging is off;
    set GRPC_VERBOSITY=debug to see it.
    """
    from livemig.common.logs import configure

    configure(log_level, log_format)


def _metrics_options(command):
    command = click.option(
        "--metrics-address",
        type=Host(),
        default=None,
        help="Address the metrics endpoint binds to (default: --listen's host; 0.0.0.0 for every interface).",
    )(command)
    return click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        default=None,
        help="Serve Prometheus metrics on this port (0: any free port).",
    )(command)


def _keep_buffers_option(process: str, stream: str):
    """--keep-buffers-seconds, of the sender (its connection processes) or the receiver (its data workers)."""
    return click.option(
        "--keep-buffers-seconds",
        type=Duration("s", min_seconds=MIN_QUIET_SECONDS, max_seconds=MAX_QUIET_SECONDS),
        default=f"{QUIET_SECONDS:g}s",
        show_default=True,
        help=f"A {process} keeps the buffers it freed for the next {stream}, and gives them back to the "
        f"system after this long without one (bare number: s). Longer: a {stream} after a longer pause "
        "does not fault them in again; shorter: an idle service holds less memory for less time.",
    )


@cli.command()
@click.option(
    "--listen",
    type=HostPort(resolve=True, allow_port_zero=True),
    default="0.0.0.0:7868",
    show_default=True,
    help="HOST:PORT for the Receiver API.",
)
@click.option(
    "--memory-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where destination memory files are created (tmpfs or hugetlbfs for real guests).",
)
@_metrics_options
@click.option(
    "--max-batch-bytes",
    type=Size(min_bytes=4096, max_bytes=64 << 20),
    default=f"{ReceiverLimits().max_batch_bytes >> 20}M",
    show_default=True,
    help="Largest page payload one batch may carry (K/M/G).",
)
@click.option(
    "--max-sessions",
    type=click.IntRange(1, 4096),
    default=ReceiverLimits().max_sessions,
    show_default=True,
    help="Concurrent migrations.",
)
@click.option(
    "--max-destination-bytes",
    type=Size(),
    default=str(ReceiverLimits().max_destination_bytes),
    help="Guest memory all sessions together may hold, K/M/G/T (0: the free space of --memory-dir).",
)
@click.option(
    "--idle-timeout",
    type=Duration("s", min_seconds=0.1),
    default=f"{ReceiverLimits().idle_timeout_seconds:g}s",
    show_default=True,
    help="How long a session may go without an open stream or a call before it is dropped (bare number: s).",
)
@click.option(
    "--data-workers",
    type=click.IntRange(0, 1024),
    default=ReceiverLimits().data_workers,
    show_default=True,
    help="Processes that serve page streams, each on a port of its own (0: one per core).",
)
@click.option(
    "--data-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="First data-worker port (worker k listens on it + k); 0: free ports, announced to senders.",
)
@click.option(
    "--max-streams-per-worker",
    type=click.IntRange(1, 4096),
    default=ReceiverLimits().max_streams_per_worker,
    show_default=True,
    help="Page streams one data worker serves at once; one more is refused (RESOURCE_EXHAUSTED).",
)
@click.option(
    "--write-mode",
    type=click.Choice(["auto", "pwrite", "mapped"]),
    default=ReceiverLimits().write_mode,
    show_default=True,
    help="How data workers write destination memory: pwrite (least CPU, but one writer at a time per "
    "tmpfs file), mapped (a shared mapping: workers write in parallel; hugetlbfs needs it); "
    "auto: mapped from 3 data workers on.",
)
@click.option(
    "--max-unsettled-batches",
    type=click.IntRange(64, 1 << 24),
    default=ReceiverLimits().max_unsettled_batches,
    show_default=True,
    help="Batch ids a session may send ahead of the oldest one it has not settled (the receiver remembers "
    "those: 170 bytes an id, and 74 in each data worker); one more is refused (RESOURCE_EXHAUSTED).",
)
@_keep_buffers_option("data worker", "stream")
@tls_options(server=True)
def receiver(
    listen: str,
    memory_dir: Path,
    metrics_address: str | None,
    metrics_port: int | None,
    max_batch_bytes: int,
    max_sessions: int,
    max_destination_bytes: int,
    idle_timeout: float,
    data_workers: int,
    data_port: int,
    max_streams_per_worker: int,
    write_mode: str,
    max_unsettled_batches: int,
    keep_buffers_seconds: float,
    security,
) -> None:
    """Run the receiver service (destination host)."""
    from livemig.receiver.server import Receiver

    try:
        memory_dir.mkdir(parents=True, exist_ok=True)
        probe = memory_dir / f".livemig-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        _fail(f"livemig receiver: --memory-dir {memory_dir}: {error.strerror or error}")
    limits = ReceiverLimits(
        max_batch_bytes,
        max_sessions,
        max_destination_bytes,
        idle_timeout,
        data_workers,
        max_streams_per_worker,
        write_mode,
        max_unsettled_batches,
        keep_buffers_seconds,
    )
    try:
        service = Receiver(memory_dir, limits, security, listen.rpartition(":")[0], data_port)
    except (OSError, RuntimeError) as error:
        _fail(f"livemig receiver: cannot start the data workers: {error}")
    _serve("receiver", service.host, listen, metrics_address, metrics_port, security, on_stop=service.shut_down)


@cli.command()
@click.option(
    "--listen",
    type=HostPort(resolve=True, allow_port_zero=True),
    default="0.0.0.0:7867",
    show_default=True,
    help="HOST:PORT for the Sender API.",
)
@_metrics_options
@click.option("--pause-hook", default="", help="Command that pauses the guest at switchover (when no guest_pid).")
@click.option("--resume-hook", default="", help="Command that resumes the guest when a migration fails.")
@click.option(
    "--throttle-hook",
    default="",
    help="Command that throttles a hook guest for auto-converge (told LIVEMIG_THROTTLE_PERCENT; 0 releases).",
)
@click.option(
    "--memory-root",
    "memory_roots",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Only guest memory files under this directory (repeatable); default: any file the sender can read.",
)
@click.option(
    "--dirty-log-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Dirty maps are DIR/<region file name>.dirty (default: the <region>.dirty sibling).",
)
@click.option(
    "--qmp-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="QEMU guests' QMP sockets live here; a request's qmp_socket names one under it (default: QMP guest "
    "control off).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Records of the guests it pauses, so that a sender started after a crash resumes them "
    "(default: /run/livemig/sender, or none where it cannot be made).",
)
@click.option(
    "--max-bandwidth",
    "default_max_bandwidth",
    type=Size(),
    default="0",
    help="Bandwidth cap (wire bytes/s, K/M/G) of every migration that sets none; 0: none.",
)
@click.option(
    "--max-watch-streams",
    type=click.IntRange(1, 24),
    default=sender_defaults.DEFAULT_MAX_WATCH_STREAMS,
    show_default=True,
)
@click.option(
    "--max-watch-streams-per-client",
    type=click.IntRange(1, 24),
    default=sender_defaults.DEFAULT_MAX_WATCH_STREAMS_PER_CLIENT,
    show_default=True,
)
@click.option(
    "--max-migrations",
    type=click.IntRange(1, 1024),
    default=sender_defaults.DEFAULT_MAX_MIGRATIONS,
    show_default=True,
    help="Migrations running at once; one more StartMigration is refused (RESOURCE_EXHAUSTED).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(0, 65536),
    default=0,
    show_default=True,
    help="Connections (each a process) of running migrations together; a start that would pass it is "
    "refused (RESOURCE_EXHAUSTED). 0: 32 per core, at least 128.",
)
@click.option(
    "--chunk-span-factor",
    type=click.IntRange(1, sender_defaults.MAX_CHUNK_SPAN_FACTOR),
    default=sender_defaults.DEFAULT_CHUNK_SPAN_FACTOR,
    show_default=True,
    help="A chunk of sparse memory covers up to this many times the batch limit, so that its batch is "
    "fuller (fewer, fuller batches); 1: every chunk covers the batch limit.",
)
@_keep_buffers_option("connection process", "migration")
@tls_options(server=True)
def sender(
    listen: str,
    metrics_address: str | None,
    metrics_port: int | None,
    pause_hook: str,
    resume_hook: str,
    throttle_hook: str,
    memory_roots: tuple[str, ...],
    dirty_log_dir: str | None,
    qmp_dir: str | None,
    state_dir: str | None,
    default_max_bandwidth: int,
    max_watch_streams: int,
    max_watch_streams_per_client: int,
    max_migrations: int,
    max_connections: int,
    chunk_span_factor: int,
    keep_buffers_seconds: float,
    security,
) -> None:
    """Run the sender service (source host).

    Its TLS settings also secure its page streams to receivers: --tls-cert is its
    client certificate there and --tls-ca must verify the receivers.
    """
    from livemig.sender.config import SenderConfig
    from livemig.sender.guest import GuestHooks
    from livemig.sender.server import build_sender, cancel_all

    config = SenderConfig(
        hooks=GuestHooks(pause_hook, resume_hook, throttle_hook),
        memory_roots=tuple(Path(root).resolve() for root in memory_roots),
        dirty_log_dir=Path(dirty_log_dir).resolve() if dirty_log_dir else None,
        qmp_dir=Path(qmp_dir).resolve() if qmp_dir else None,
        state_dir=_sender_state_dir(state_dir),
        max_bandwidth=float(default_max_bandwidth),
        max_watch_streams=max_watch_streams,
        max_watch_streams_per_client=max_watch_streams_per_client,
        max_migrations=max_migrations,
        max_connections=max_connections,
        chunk_span_factor=chunk_span_factor,
        keep_buffers_seconds=keep_buffers_seconds,
    )
    host, registry = build_sender(config, security)
    _serve("sender", host, listen, metrics_address, metrics_port, security, on_stop=lambda: cancel_all(registry))


def _sender_state_dir(option: str | None) -> Path | None:
    """The folder of pause records: the operator's (it must work), or the default where it can be made."""
    from livemig.sender.pause_records import DEFAULT_STATE_DIR

    path = Path(option) if option else DEFAULT_STATE_DIR
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(13, "not writable")
    except OSError as error:
        if option:
            _fail(f"livemig sender: --state-dir {option}: {error.strerror or error}")
        click.echo(f"livemig sender: no pause records ({path}: {error.strerror or error}); see --state-dir", err=True)
        return None
    return path.resolve()


def _sender_option(command):
    return click.option(
        "--sender", "sender_address", required=True, type=HostPort(), help="HOST:PORT of the sender service."
    )(command)


@cli.command("send-migration")
@_sender_option
@click.option("--destination", required=True, type=HostPort(), help="HOST:PORT of the receiver service.")
@click.option(
    "--memory",
    "memory",
    multiple=True,
    required=True,
    help="FILE[@GPA] backing guest memory; repeat for several regions. Without @GPA the sender places the "
    "region right after the previous one (the first at 0), from its own view of the files.",
)
@click.option("--connections", type=click.IntRange(1, MAX_CONNECTIONS), default=1, show_default=True)
@click.option("--skip-zero-pages", is_flag=True, help="Do not send all-zero pages.")
@click.option(
    "--compress",
    type=click.Choice(["none", "zstd", "lz4"]),
    default="none",
    show_default=True,
    help="Compress page batches; adaptive: a batch that does not shrink by 10 % goes out raw.",
)
@click.option("--page-size", type=PAGE_SIZE, default="4K", show_default=True, help="Guest page size (K/M/G).")
@click.option(
    "--max-batch-bytes",
    type=Size(max_bytes=64 << 20),
    default="0",
    help="Payload per batch, 64K..64M (0: sender default).",
)
@click.option("--verify", is_flag=True, help="Compare a digest of the destination with the source.")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as one JSON object.")
@click.option(
    "--detach",
    is_flag=True,
    help="Start the migration, print its id and exit (follow it with `livemig migrations watch`).",
)
@click.option(
    "--check",
    is_flag=True,
    help="Preflight: check files, dirty maps, the guest, the receiver (TLS, limits, free space) and print "
    "a forecast; nothing is paused, no page is sent. Exits 0 when the migration can start.",
)
@click.option("--dirty-log", is_flag=True, help="Live migration: each region's dirty map is FILE.dirty.")
@click.option(
    "--guest-pid", type=click.IntRange(0, None), default=0, help="Process to pause at switchover (SIGSTOP/SIGCONT)."
)
@click.option(
    "--qmp-socket",
    default="",
    help="A QEMU guest to pause with QMP: its socket's name under the sender's --qmp-dir.",
)
@click.option(
    "--guest-pid-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read --guest-pid from this file (waits up to --guest-pid-wait for it).",
)
@click.option(
    "--guest-pid-wait",
    type=Duration("s"),
    default="60s",
    show_default=True,
    help="How long to wait for --guest-pid-file (bare number: s).",
)
@click.option(
    "--downtime",
    type=Duration("ms", min_seconds=0.001, max_seconds=3600),
    default=f"{sender_defaults.DEFAULT_DOWNTIME_MS}ms",
    show_default=True,
    help="Downtime target (bare number: ms, as Cloud Hypervisor's --downtime and QEMU's downtime-limit).",
)
@click.option(
    "--migration-timeout",
    type=Duration("s", max_seconds=7 * 86400),
    default="0",
    help="Give up or force switchover after this long (bare number: s, as Cloud Hypervisor; 200ms, 12s, 5m, "
    "1h30m accepted; 0: no limit). A one-pass migration (no --dirty-log) past it ends FAILED, guest resumed.",
)
@click.option("--timeout-strategy", type=click.Choice(["cancel", "force"]), default="cancel", show_default=True)
@click.option(
    "--auto-converge",
    is_flag=True,
    help="Throttle a guest that dirties memory faster than the link sends it (QEMU's: 20 %, +10 %, at most 99 %).",
)
@click.option(
    "--stall-timeout",
    type=Duration("s", max_seconds=7 * 86400),
    default="0",
    help="End pre-copy by --timeout-strategy when the dirty bytes left reach no new low for this long "
    "(bare number: s; 0: never; KubeVirt's progress timeout).",
)
@click.option(
    "--max-iterations",
    type=click.IntRange(0, 100_000),
    default=0,
    help=f"Pre-copy iterations before the strategy (0: {sender_defaults.DEFAULT_MAX_ITERATIONS}).",
)
@click.option(
    "--available-bandwidth",
    type=Size(),
    default="0",
    help="Bytes/s to assume for the downtime estimate, K/M/G (0: measured).",
)
@click.option(
    "--max-bandwidth",
    type=Size(),
    default="0",
    help="Cap on the wire bytes/s of all connections together, K/M/G per second (100M: 100 MiB/s; "
    "0: the sender's --max-bandwidth). `livemig migrations set` changes it while it runs.",
)
@tls_options(server=False)
def send_migration(
    sender_address: str,
    destination: str,
    memory: tuple[str, ...],
    connections: int,
    skip_zero_pages: bool,
    compress: str,
    page_size: int,
    max_batch_bytes: int,
    verify: bool,
    as_json: bool,
    detach: bool,
    check: bool,
    dirty_log: bool,
    guest_pid: int,
    qmp_socket: str,
    guest_pid_file: str | None,
    guest_pid_wait: float,
    downtime: float,
    migration_timeout: float,
    timeout_strategy: str,
    auto_converge: bool,
    stall_timeout: float,
    max_iterations: int,
    available_bandwidth: int,
    max_bandwidth: int,
    security,
) -> None:
    """Migrate guest memory and follow it to the end; exits 0 only when COMPLETED.

    Ctrl-C cancels the migration (the source guest is resumed) and exits 130; SIGTERM
    and SIGHUP do the same and exit 143 and 129. The migration id goes to stderr
    as soon as it exists.
    """
    from livemig.cli import client

    try:
        args = [client.parse_memory_arg(m) for m in memory]
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--memory") from error
    if max_batch_bytes and max_batch_bytes < 64 << 10:
        raise click.BadParameter("must be 0 or between 64K and 64M", param_hint="--max-batch-bytes")
    if guest_pid_file:
        try:
            guest_pid = client.read_pid_file(guest_pid_file, guest_pid_wait)
        except client.PidFileMissing as error:
            _fail(f"error: --guest-pid-file: {error}", client.EXIT_USAGE)
    request = pb.StartMigrationRequest(
        destination=destination,
        regions=client.request_regions(args, dirty_log),
        connections=connections,
        skip_zero_pages=skip_zero_pages,
        compression=pb.Compression.Value(f"COMPRESSION_{compress.upper()}"),
        page_size=page_size,
        verify=verify,
        max_batch_bytes=max_batch_bytes,
        guest_pid=guest_pid,
        qmp_socket=qmp_socket,
        downtime_ms=max(1, round(downtime * 1000)),
        timeout_ms=round(migration_timeout * 1000),
        timeout_strategy=pb.TIMEOUT_STRATEGY_FORCE if timeout_strategy == "force" else pb.TIMEOUT_STRATEGY_CANCEL,
        max_iterations=max_iterations,
        available_bandwidth_bytes_per_second=float(available_bandwidth),
        auto_converge=auto_converge,
        stall_timeout_ms=round(stall_timeout * 1000),
        max_bandwidth_bytes_per_second=float(max_bandwidth),
    )
    from livemig.cli.follow import check_migration, start_and_follow

    if check:
        sys.exit(check_migration(sender_address, request, security, as_json=as_json))
    sys.exit(start_and_follow(sender_address, request, security, as_json=as_json, detach=detach))


@cli.command("migrate-vm")
@_sender_option
@click.option("--destination", required=True, type=HostPort(), help="HOST:PORT of the receiver service.")
@click.option(
    "--qmp-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="The sender's --qmp-dir, as seen here (run this command on the source host).",
)
@click.option("--guest", required=True, help="The source guest's QMP socket: its name under --qmp-dir.")
@click.option(
    "--destination-command",
    required=True,
    help="Command that starts the destination QEMU: the source's machine and devices, each RAM backend on "
    "{mem[ID]} (its file on the receiver, ID the backend's id), -qmp unix:{qmp},server=on,wait=off and "
    "-incoming defer. It may run it elsewhere (ssh); shell words, no shell.",
)
@click.option(
    "--destination-qmp",
    default="",
    help="Path of the destination QEMU's QMP socket ({qmp}); default: a fresh one in a temporary folder.",
)
@click.option(
    "--incoming",
    type=HostPort(),
    default=None,
    help="HOST:PORT the destination QEMU takes device state on (default: the receiver's host, a free port).",
)
@click.option("--connections", type=click.IntRange(1, MAX_CONNECTIONS), default=2, show_default=True)
@click.option("--no-verify", is_flag=True, help="Skip the digest comparison of all memory (shorter downtime).")
@click.option("--keep-source", is_flag=True, help="Leave the source QEMU paused (postmigrate) instead of quitting it.")
@click.option(
    "--destination-log",
    type=click.Path(dir_okay=False),
    default="",
    help="Append the destination QEMU's output to this file (default: discarded).",
)
@click.option(
    "--start-timeout",
    type=Duration("s", min_seconds=1, max_seconds=600),
    default="30s",
    show_default=True,
    help="How long the destination QEMU may take to answer QMP (bare number: s).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON object.")
@tls_options(server=False)
def migrate_vm_command(
    sender_address: str,
    destination: str,
    qmp_dir: str,
    guest: str,
    destination_command: str,
    destination_qmp: str,
    incoming: str | None,
    connections: int,
    no_verify: bool,
    keep_source: bool,
    destination_log: str,
    start_timeout: float,
    as_json: bool,
    security,
) -> None:
    """Migrate a running QEMU VM: livemig moves its RAM, QEMU its device state.

    The source QEMU keeps its RAM in shared files (memory-backend-file, share=on);
    the sender pauses it over QMP, moves the RAM (zero pages skipped, verified),
    then QEMU migrates device state with x-ignore-shared into a destination QEMU
    started from --destination-command on the receiver's files. Exits 0 when the
    destination runs; on any failure the source runs again and no destination is
    left (exit 1). Ctrl-C, SIGTERM or SIGHUP roll back the same way and exit 130, 143 or 129.
    """
    from livemig.cli import client
    from livemig.cli import migrate_vm as vm

    plan = vm.VmMigrationPlan(
        sender=sender_address,
        destination=destination,
        qmp_dir=Path(qmp_dir),
        guest=guest,
        destination_command=destination_command,
        destination_qmp=destination_qmp,
        incoming=incoming or "",
        connections=connections,
        verify=not no_verify,
        keep_source=keep_source,
        start_timeout=start_timeout,
        destination_log=destination_log,
    )
    from livemig.cli.follow import exit_code_of, handle_termination

    handle_termination()  # SIGTERM and SIGHUP roll back as Ctrl-C does
    try:
        outcome = vm.migrate_vm(plan, security)
    except KeyboardInterrupt as interrupt:
        click.echo("interrupted: the memory migration was cancelled and the source guest resumed", err=True)
        sys.exit(exit_code_of(interrupt))
    vm.print_report(outcome, as_json)
    sys.exit(client.EXIT_COMPLETED if outcome.ok else client.EXIT_FAILED)


@cli.group()
def guest() -> None:
    """Guests a sender paused."""


@guest.command("resume")
@click.option(
    "--state-dir",
    type=click.Path(exists=True, file_okay=False),
    default="/run/livemig/sender",
    show_default=True,
    help="The sender's --state-dir.",
)
def guest_resume(state_dir: str) -> None:
    """Resume every guest that a sender which is no longer running left paused.

    Guests of running senders are left alone. Exits 1 if a guest could not be resumed.
    """
    from livemig.sender.pause_records import PauseRecords

    outcomes = PauseRecords(Path(state_dir)).resume_orphans()
    for record, outcome in outcomes:
        click.echo(f"migration {record.migration_id}: {outcome}")
    if not outcomes:
        click.echo("no guest left paused by a sender that is gone")
    sys.exit(1 if any(outcome.startswith("could not") for _record, outcome in outcomes) else 0)


@cli.group()
def migrations() -> None:
    """List, inspect, follow and cancel the migrations of a sender (also ones this CLI did not start)."""


@migrations.command("list")
@_sender_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line, one line per migration.")
@tls_options(server=False)
def migrations_list(sender_address: str, as_json: bool, security) -> None:
    """The migrations the sender remembers (running ones and the latest finished ones)."""
    from livemig.cli.follow import list_migrations

    sys.exit(list_migrations(sender_address, security, as_json))


@migrations.command("show")
@_sender_option
@click.argument("migration_id")
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
@tls_options(server=False)
def migrations_show(sender_address: str, migration_id: str, as_json: bool, security) -> None:
    """One migration's status and statistics table; exit code by its state (0 completed, running or pending)."""
    from livemig.cli.follow import show_migration

    sys.exit(show_migration(sender_address, migration_id, security, as_json))


@migrations.command("watch")
@_sender_option
@click.argument("migration_id")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as one JSON object.")
@tls_options(server=False)
def migrations_watch(sender_address: str, migration_id: str, as_json: bool, security) -> None:
    """Follow a migration to its end; Ctrl-C stops watching and leaves it running (exit 130).

    `livemig migrations cancel` cancels.
    """
    from livemig.cli.follow import watch_migration

    sys.exit(watch_migration(sender_address, migration_id, security, as_json))


@migrations.command("set")
@_sender_option
@click.argument("migration_id")
@click.option(
    "--downtime",
    type=Duration("ms", min_seconds=0.001, max_seconds=3600),
    default=None,
    help="New downtime target (bare number: ms).",
)
@click.option("--max-bandwidth", type=Size(), default=None, help="New bandwidth cap, K/M/G per second (0: none).")
@click.option("--max-iterations", type=click.IntRange(1, 100_000), default=None, help="New iteration limit.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
@tls_options(server=False)
def migrations_set(
    sender_address: str,
    migration_id: str,
    downtime: float | None,
    max_bandwidth: int | None,
    max_iterations: int | None,
    as_json: bool,
    security,
) -> None:
    """Change a running migration's limits; they take effect within one iteration or one second."""
    from livemig.cli.follow import set_limits

    if downtime is None and max_bandwidth is None and max_iterations is None:
        raise click.UsageError("give --downtime, --max-bandwidth or --max-iterations")
    limits = pb.MigrationLimits(migration_id=migration_id)
    if downtime is not None:
        limits.downtime_ms = max(1, round(downtime * 1000))
    if max_bandwidth is not None:
        limits.max_bandwidth_bytes_per_second = float(max_bandwidth)
    if max_iterations is not None:
        limits.max_iterations = max_iterations
    sys.exit(set_limits(sender_address, limits, security, as_json))


@migrations.command("cancel")
@_sender_option
@click.argument("migration_id")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as one JSON object.")
@tls_options(server=False)
def migrations_cancel(sender_address: str, migration_id: str, as_json: bool, security) -> None:
    """Cancel a migration (the source guest is resumed); exits 0 once it is CANCELLED."""
    from livemig.cli.follow import cancel_migration

    sys.exit(cancel_migration(sender_address, migration_id, security, as_json))


@cli.command()
@click.option("--memory", required=True, type=click.Path(dir_okay=False), help="Guest memory file (created sparse).")
@click.option("--dirty-log", default=None, type=click.Path(dir_okay=False), help="Dirty map (default: MEMORY.dirty).")
@click.option(
    "--size",
    "--size-mib",
    "size",
    type=MEMORY_SIZE,
    default=None,
    help="Memory size, K/M/G (bare number: MiB, as QEMU's -m; default: the file's size).",
)
@click.option("--page-size", type=PAGE_SIZE, default="4K", show_default=True)
@click.option("--touch-ratio", type=RATIO, default=0.5, show_default=True, help="Share of pages touched at start.")
@click.option(
    "--rate",
    type=Size(default_unit="M"),
    default="16M",
    show_default=True,
    help="Bytes written per second afterwards, K/M/G (bare number: MiB/s).",
)
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--zero-ratio", type=RATIO, default=0.1, show_default=True, help="Share of writes that write zeros.")
@click.option("--once", is_flag=True, help="Touch once, then write nothing more (stay alive).")
@click.option("--duration", type=Duration("s"), default="0", help="Exit after this long (bare number: s; 0: never).")
@click.option("--seed", type=click.IntRange(0, None), default=1, show_default=True)
@click.option("--pid-file", default=None, type=click.Path(dir_okay=False), help="Write the pid here once touched.")
def memtouch(
    memory: str,
    dirty_log: str | None,
    size: int | None,
    page_size: int,
    touch_ratio: float,
    rate: int,
    threads: int,
    zero_ratio: float,
    once: bool,
    duration: float,
    seed: int,
    pid_file: str | None,
) -> None:
    """A running guest: touch memory, keep writing at a rate, mark the dirty map."""
    from livemig.cli.memtouch import TouchPlan, main_memtouch

    plan = TouchPlan(page_size, touch_ratio, float(rate), threads, zero_ratio, once, duration, seed)
    main_memtouch(memory, dirty_log, size or 0, plan, pid_file)


@cli.command()
@click.option("--size", "--size-mib", "size", type=MEMORY_SIZE, default="256M", show_default=True, help="Guest memory.")
@click.option("--touched", type=RATIO, default=0.5, show_default=True, help="Share of pages holding data.")
@click.option("--connections", type=click.IntRange(1, MAX_CONNECTIONS), default=2, show_default=True)
def demo(size: int, touched: float, connections: int) -> None:
    """Migrate a generated guest image with and without zero-page skipping, verified."""
    from livemig.cli.demo import run_demo

    sys.exit(run_demo(size, touched, connections))


def _number_list(kind, bounds: tuple[float, float]):
    """A click callback: comma-separated numbers, each within bounds."""

    def convert(ctx, param, value: str):
        try:
            numbers = [kind(part) for part in value.split(",")]
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
        if not all(bounds[0] <= n <= bounds[1] for n in numbers):
            raise click.BadParameter(f"every value must be between {bounds[0]:g} and {bounds[1]:g}")
        return numbers

    return convert


@cli.command()
@click.option("--size", "--size-mib", "size", type=MEMORY_SIZE, default="1G", show_default=True, help="Per image.")
@click.option(
    "--connections",
    "connection_counts",
    default="1,2",
    show_default=True,
    callback=_number_list(int, (1, MAX_CONNECTIONS)),
)
@click.option("--touched", "touched_ratios", default="0,0.5,1", show_default=True, callback=_number_list(float, (0, 1)))
@click.option("--batch-mib", type=click.IntRange(1, 64), default=8, show_default=True)  # the default batch
@click.option("--repeat", type=click.IntRange(1, 100), default=1, show_default=True, help="Runs per case; best kept.")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
@click.option(
    "--memory-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Receiver's destination folder (default: a tmpfs folder).",
)
@click.option(
    "--pattern",
    type=click.Choice(["random", "runs"]),
    default="random",
    show_default=True,
    help="Touched pages one by one at random (worst case) or in 256 KiB runs (closer to real guests).",
)
@click.option(
    "--receiver-data-workers",
    type=click.IntRange(1, 1024),
    default=None,
    help="The receiver's --data-workers (default: the receiver's own default, one per core).",
)
@click.option(
    "--receiver-write-mode",
    type=click.Choice(["auto", "pwrite", "mapped"]),
    default=None,
    help="The receiver's --write-mode (default: the receiver's own default).",
)
def bench(
    size: int,
    connection_counts: list[int],
    touched_ratios: list[float],
    batch_mib: int,
    repeat: int,
    markdown: bool,
    memory_dir: Path | None,
    pattern: str,
    receiver_data_workers: int | None,
    receiver_write_mode: str | None,
) -> None:
    """Scaling with connections, skip vs no-skip, CPU per GiB, against N process pairs of bare gRPC."""
    from livemig.cli.bench import run_bench

    run_bench(
        size=size,
        connections=connection_counts,
        touched=touched_ratios,
        batch_bytes=batch_mib << 20,
        repeat=repeat,
        markdown=markdown,
        destination_dir=memory_dir,
        pattern=pattern,
        receiver_data_workers=receiver_data_workers,
        receiver_write_mode=receiver_write_mode,
    )


@cli.command("make-image")
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--size", "--size-mib", "size", type=MEMORY_SIZE, default="256M", show_default=True, help="K/M/G.")
@click.option("--touched", type=RATIO, default=0.5, show_default=True, help="Share of pages holding random data.")
@click.option("--page-size", type=PAGE_SIZE, default="4K", show_default=True)
@click.option("--seed", type=click.IntRange(0, None), default=0, show_default=True)
def make_image_command(output: Path, size: int, touched: float, page_size: int, seed: int) -> None:
    """Write a guest memory image (untouched 8 MiB blocks stay file holes)."""
    from livemig.cli.images import make_image
    from livemig.cli.units import format_bytes

    if size % page_size:
        raise click.BadParameter(f"{size} is not a multiple of the page size {page_size}", param_hint="--size")
    try:
        pages = make_image(output, size, touched, page_size=page_size, seed=seed)
    except OSError as error:
        _fail(f"error: cannot write {output}: {error.strerror or error}")
    click.echo(f"{output}: {format_bytes(size)}, {pages} pages touched")


@cli.command()
@click.option("--address", required=True, type=HostPort(), help="HOST:PORT of a livemig service.")
@click.option("--service", default="", help="Service name to ask about (default: the server as a whole).")
@click.option(
    "--timeout", type=Duration("s", min_seconds=0.001), default="5s", show_default=True, help="Bare number: s."
)
@tls_options(server=False)
def health(address: str, service: str, timeout: float, security) -> None:
    """gRPC health check (grpc.health.v1); exits 0 only when SERVING. For container healthchecks."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with security.channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
    except grpc.RpcError as error:
        details = (error.details() or "").strip().splitlines()
        _fail(f"{address}: {error.code().name}: {details[0] if details else ''}")
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    click.echo(f"{address}: {name}")
    sys.exit(0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1)


@cli.command("bench-live")
@click.option("--size", "--size-mib", "size", type=MEMORY_SIZE, default="512M", show_default=True, help="K/M/G.")
@click.option("--touched", "touched_ratios", default="0.5,1", show_default=True, callback=_number_list(float, (0, 1)))
@click.option(
    "--connections", "connection_counts", default="1", show_default=True, callback=_number_list(int, (1, 128))
)
@click.option("--rate", type=Size(default_unit="M"), default="16M", show_default=True, help="Guest writes/s, K/M/G.")
@click.option(
    "--downtime", type=Duration("ms", min_seconds=0.001), default="200ms", show_default=True, help="Bare number: ms."
)
@click.option("--repeat", type=click.IntRange(1, 100), default=1, show_default=True)
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
def bench_live(
    size: int,
    touched_ratios: list[float],
    connection_counts: list[int],
    rate: int,
    downtime: float,
    repeat: int,
    markdown: bool,
) -> None:
    """Migrate a running memtouch guest live: iterations, expected vs measured downtime."""
    from livemig.cli.bench_live import run_live_bench

    run_live_bench(
        size=size,
        touched=touched_ratios,
        connections=connection_counts,
        rate_mib=rate / (1 << 20),
        downtime_ms=max(1, round(downtime * 1000)),
        repeat=repeat,
        markdown=markdown,
    )


name_envvars(cli)


def main() -> None:
    """Run the CLI; usage errors are one line on stderr (exit 2), not click's four."""
    try:
        code = cli.main(prog_name="livemig", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as error:
        click.echo(error.format_message(), err=True)
        code = error.exit_code
    except click.ClickException as error:
        context = getattr(error, "ctx", None)
        where = context.command_path if context is not None else "livemig"
        click.echo(f"{where}: error: {error.format_message()}", err=True)
        code = error.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

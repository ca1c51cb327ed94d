"""`livemig`: run the services, migrate, demo, benchmark.

Every option can also come from the environment: LIVEMIG_<COMMAND>_<OPTION>,
e.g. LIVEMIG_RECEIVER_MEMORY_DIR.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click
import grpc

from livemig.common.proto import livemig_pb2 as pb


def tls_options(server: bool):
    """--tls-cert/--tls-key/--tls-ca/--insecure, resolved into a `security` argument."""

    def decorate(command):
        @click.option("--insecure", is_flag=True, help="Plaintext gRPC (no TLS). Only for tests and local demos.")
        @click.option(
            "--tls-ca",
            default=None,
            type=click.Path(exists=True, dir_okay=False),
            help="CA bundle that peers' certificates must chain to"
            + (" (clients must then present one: mutual TLS)." if server else "."),
        )
        @click.option(
            "--tls-key", default=None, type=click.Path(exists=True, dir_okay=False), help="Private key of --tls-cert."
        )
        @click.option(
            "--tls-cert",
            default=None,
            type=click.Path(exists=True, dir_okay=False),
            help="Certificate (chain) this process presents" + ("." if server else " (mutual TLS)."),
        )
        @functools.wraps(command)
        def wrapper(*args, tls_cert, tls_key, tls_ca, insecure, **kwargs):
            from livemig.common.tls import Security, SecurityConfigError

            try:
                security = Security.from_files(tls_cert, tls_key, tls_ca, insecure, server=server)
            except SecurityConfigError as error:
                raise click.UsageError(str(error)) from error
            return command(*args, security=security, **kwargs)

        return wrapper

    return decorate


def _serve(role: str, host, listen: str, metrics_port: int | None, security, on_stop=None) -> None:
    bind_host = listen.rpartition(":")[0]
    security.warn_if_plaintext(f"livemig {role}")
    if metrics_port is not None:
        from prometheus_client import start_http_server

        metrics_server, _thread = start_http_server(metrics_port, addr=bind_host.strip("[]") or "0.0.0.0")
        click.echo(f"livemig {role} metrics on {bind_host}:{metrics_server.server_port}")
    port = host.start(listen, security.server_credentials())
    # The ready line: scripts and tests wait for it (and learn the port when it was 0).
    click.echo(f"livemig {role} listening on {bind_host}:{port}" + (" (plaintext)" if security.insecure else " (TLS)"))
    sys.stdout.flush()
    host.serve_until_signalled(on_stop)


@click.group(context_settings={"auto_envvar_prefix": "LIVEMIG", "help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object a line, with migration_id where a line concerns a migration.",
)
def cli(log_level: str, log_format: str) -> None:
    """Memory-transfer plane of VM live migration, with zero-page skipping."""
    from livemig.common.logs import configure

    configure(log_level, log_format)


@cli.command()
@click.option("--listen", default="0.0.0.0:7868", show_default=True, help="HOST:PORT for the Receiver API.")
@click.option(
    "--memory-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where destination memory files are created (tmpfs or hugetlbfs for real guests).",
)
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port.")
@click.option(
    "--max-batch-bytes", type=int, default=4 << 20, show_default=True, help="Largest page payload one batch may carry."
)
@click.option("--max-sessions", type=int, default=16, show_default=True, help="Concurrent migrations accepted.")
@click.option(
    "--max-destination-bytes",
    type=int,
    default=0,
    help="Guest memory all sessions together may hold (0: the free space of --memory-dir).",
)
@click.option(
    "--idle-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds a session may go without an open stream or a call before it is dropped.",
)
@click.option(
    "--data-workers",
    type=click.IntRange(0, 1024),
    default=0,
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
    default=128,
    show_default=True,
    help="Page streams one data worker serves at once; one more is refused (RESOURCE_EXHAUSTED).",
)
@tls_options(server=True)
def receiver(
    listen: str,
    memory_dir: Path,
    metrics_port: int | None,
    max_batch_bytes: int,
    max_sessions: int,
    max_destination_bytes: int,
    idle_timeout: float,
    data_workers: int,
    data_port: int,
    max_streams_per_worker: int,
    security,
) -> None:
    """Run the receiver service (destination host)."""
    from livemig.receiver.registry import ReceiverLimits
    from livemig.receiver.server import Receiver

    limits = ReceiverLimits(
        max_batch_bytes, max_sessions, max_destination_bytes, idle_timeout, data_workers, max_streams_per_worker
    )
    service = Receiver(memory_dir, limits, security, listen.rpartition(":")[0], data_port)
    _serve("receiver", service.host, listen, metrics_port, security, on_stop=service.shut_down)


@cli.command()
@click.option("--listen", default="0.0.0.0:7867", show_default=True, help="HOST:PORT for the Sender API.")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port.")
@click.option("--pause-hook", default="", help="Command that pauses the guest at switchover (when no guest_pid).")
@click.option("--resume-hook", default="", help="Command that resumes the guest when a migration fails.")
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
@click.option("--max-watch-streams", type=click.IntRange(1, 24), default=16, show_default=True)
@click.option("--max-watch-streams-per-client", type=click.IntRange(1, 24), default=4, show_default=True)
@tls_options(server=True)
def sender(
    listen: str,
    metrics_port: int | None,
    pause_hook: str,
    resume_hook: str,
    memory_roots: tuple[str, ...],
    dirty_log_dir: str | None,
    max_watch_streams: int,
    max_watch_streams_per_client: int,
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
        hooks=GuestHooks(pause_hook, resume_hook),
        memory_roots=tuple(Path(root).resolve() for root in memory_roots),
        dirty_log_dir=Path(dirty_log_dir).resolve() if dirty_log_dir else None,
        max_watch_streams=max_watch_streams,
        max_watch_streams_per_client=max_watch_streams_per_client,
    )
    host, registry = build_sender(config, security)
    _serve("sender", host, listen, metrics_port, security, on_stop=lambda: cancel_all(registry))


@cli.command("send-migration")
@click.option("--sender", "sender_address", required=True, help="HOST:PORT of the sender service.")
@click.option("--destination", required=True, help="HOST:PORT of the receiver service.")
@click.option(
    "--memory",
    "memory",
    multiple=True,
    required=True,
    help="FILE[@GPA] backing guest memory; repeat for several regions.",
)
@click.option("--connections", type=int, default=1, show_default=True)
@click.option("--skip-zero-pages", is_flag=True, help="Do not send all-zero pages.")
@click.option("--page-size", type=int, default=4096, show_default=True)
@click.option("--max-batch-bytes", type=int, default=0, help="Payload per batch (0: sender default).")
@click.option("--verify", is_flag=True, help="Compare a digest of the destination with the source.")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as one JSON object.")
@click.option("--dirty-log", is_flag=True, help="Live migration: each region's dirty map is FILE.dirty.")
@click.option("--guest-pid", type=int, default=0, help="Process to pause at switchover (SIGSTOP/SIGCONT).")
@click.option(
    "--guest-pid-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read --guest-pid from this file (waits up to 60 s for it to appear).",
)
@click.option("--downtime", "downtime_ms", type=int, default=300, show_default=True, help="Downtime target, ms.")
@click.option("--migration-timeout", "timeout_ms", type=int, default=0, help="Give up or force after this many ms.")
@click.option("--timeout-strategy", type=click.Choice(["cancel", "force"]), default="cancel", show_default=True)
@click.option("--max-iterations", type=int, default=0, help="Pre-copy iterations before the strategy (0: 30).")
@click.option(
    "--available-bandwidth", type=float, default=0.0, help="Bytes/s to assume for the downtime estimate (0: measured)."
)
@tls_options(server=False)
def send_migration(
    sender_address: str,
    destination: str,
    memory: tuple[str, ...],
    connections: int,
    skip_zero_pages: bool,
    page_size: int,
    max_batch_bytes: int,
    verify: bool,
    as_json: bool,
    dirty_log: bool,
    guest_pid: int,
    guest_pid_file: str | None,
    downtime_ms: int,
    timeout_ms: int,
    timeout_strategy: str,
    max_iterations: int,
    available_bandwidth: float,
    security,
) -> None:
    """Migrate guest memory and follow it to the end; exits 0 only when COMPLETED."""
    from livemig.cli import client, report

    try:
        args = [client.parse_memory_arg(m) for m in memory]
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--memory") from error
    sizes = [os.stat(a.path).st_size if os.path.exists(a.path) else 0 for a in args]
    if guest_pid_file:
        guest_pid = client.read_pid_file(guest_pid_file)
    regions = client.place_regions(args, sizes)
    if dirty_log:
        for region in regions:
            region.dirty_log = region.path + ".dirty"
    request = pb.StartMigrationRequest(
        destination=destination,
        regions=regions,
        connections=connections,
        skip_zero_pages=skip_zero_pages,
        page_size=page_size,
        verify=verify,
        max_batch_bytes=max_batch_bytes,
        guest_pid=guest_pid,
        downtime_ms=downtime_ms,
        timeout_ms=timeout_ms,
        timeout_strategy=pb.TIMEOUT_STRATEGY_FORCE if timeout_strategy == "force" else pb.TIMEOUT_STRATEGY_CANCEL,
        max_iterations=max_iterations,
        available_bandwidth_bytes_per_second=available_bandwidth,
    )
    try:
        with report.progress(enabled=not as_json and sys.stdout.isatty(), show_iterations=not as_json) as on_update:
            status = client.run_migration(sender_address, request, on_update, security)
    except grpc.RpcError as error:
        click.echo(f"error: {error.code().name}: {error.details()}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(client.status_to_json(status))
    else:
        report.print_status(status)
    sys.exit(0 if status.state == pb.COMPLETED else 1)


@cli.command()
@click.option("--memory", required=True, help="Guest memory file (created sparse when missing).")
@click.option("--dirty-log", default=None, help="Dirty-page map (default: MEMORY.dirty).")
@click.option("--size-mib", type=int, default=0, help="Memory size (default: the file's size).")
@click.option("--page-size", type=int, default=4096, show_default=True)
@click.option("--touch-ratio", type=float, default=0.5, show_default=True, help="Share of pages touched at start.")
@click.option("--rate", "rate_mib", type=float, default=16.0, show_default=True, help="MiB/s written afterwards.")
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--zero-ratio", type=float, default=0.1, show_default=True, help="Share of writes that write zeros.")
@click.option("--once", is_flag=True, help="Touch once, then write nothing more (stay alive).")
@click.option("--duration", type=float, default=0.0, help="Exit after this many seconds (0: run until killed).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--pid-file", default=None, help="Write this process's pid here once memory is touched.")
def memtouch(
    memory: str,
    dirty_log: str | None,
    size_mib: int,
    page_size: int,
    touch_ratio: float,
    rate_mib: float,
    threads: int,
    zero_ratio: float,
    once: bool,
    duration: float,
    seed: int,
    pid_file: str | None,
) -> None:
    """A running guest: touch memory, keep writing at a rate, mark the dirty map."""
    from livemig.cli.memtouch import TouchPlan, main_memtouch

    plan = TouchPlan(page_size, touch_ratio, rate_mib * (1 << 20), max(threads, 1), zero_ratio, once, duration, seed)
    main_memtouch(memory, dirty_log, size_mib, plan, pid_file)


@cli.command()
@click.option("--size-mib", type=int, default=256, show_default=True, help="Guest memory size.")
@click.option("--touched", type=float, default=0.5, show_default=True, help="Share of pages holding data.")
@click.option("--connections", type=int, default=2, show_default=True)
def demo(size_mib: int, touched: float, connections: int) -> None:
    """Migrate a generated guest image with and without zero-page skipping, verified."""
    from livemig.cli.demo import run_demo

    sys.exit(run_demo(size_mib << 20, touched, connections))


@cli.command()
@click.option("--size-mib", type=int, default=1024, show_default=True, help="Guest memory size per image.")
@click.option("--connections", "connection_counts", default="1,2", show_default=True)
@click.option("--touched", "touched_ratios", default="0,0.5,1", show_default=True)
@click.option("--batch-mib", type=int, default=4, show_default=True)
@click.option("--repeat", type=int, default=1, show_default=True, help="Runs per case; the best is kept.")
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
def bench(
    size_mib: int,
    connection_counts: str,
    touched_ratios: str,
    batch_mib: int,
    repeat: int,
    markdown: bool,
    memory_dir: Path | None,
    pattern: str,
) -> None:
    """Reproduce the seed's table: zero share x skip x connections, plus the bare gRPC ceiling."""
    from livemig.cli.bench import run_bench

    run_bench(
        size=size_mib << 20,
        connections=[int(c) for c in connection_counts.split(",")],
        touched=[float(t) for t in touched_ratios.split(",")],
        batch_bytes=batch_mib << 20,
        repeat=repeat,
        markdown=markdown,
        destination_dir=memory_dir,
        pattern=pattern,
    )


@cli.command("make-image")
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--size-mib", type=int, default=256, show_default=True)
@click.option("--touched", type=float, default=0.5, show_default=True, help="Share of pages holding random data.")
@click.option("--page-size", type=int, default=4096, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def make_image_command(output: Path, size_mib: int, touched: float, page_size: int, seed: int) -> None:
    """Write a guest memory image (untouched 8 MiB blocks stay file holes)."""
    from livemig.cli.images import make_image

    pages = make_image(output, size_mib << 20, touched, page_size=page_size, seed=seed)
    click.echo(f"{output}: {size_mib} MiB, {pages} pages touched")


@cli.command()
@click.option("--address", required=True, help="HOST:PORT of a livemig service.")
@click.option("--service", default="", help="Service name to ask about (default: the server as a whole).")
@click.option("--timeout", type=float, default=5.0, show_default=True)
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
        click.echo(f"{address}: {error.code().name}: {error.details()}", err=True)
        sys.exit(1)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    click.echo(f"{address}: {name}")
    sys.exit(0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1)


@cli.command("bench-live")
@click.option("--size-mib", type=int, default=512, show_default=True, help="Guest memory size.")
@click.option("--touched", "touched_ratios", default="0.5,1", show_default=True)
@click.option("--connections", "connection_counts", default="1", show_default=True)
@click.option("--rate", "rate_mib", type=float, default=16.0, show_default=True, help="Guest write rate, MiB/s.")
@click.option("--downtime", "downtime_ms", type=int, default=200, show_default=True)
@click.option("--repeat", type=int, default=1, show_default=True)
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
def bench_live(
    size_mib: int,
    touched_ratios: str,
    connection_counts: str,
    rate_mib: float,
    downtime_ms: int,
    repeat: int,
    markdown: bool,
) -> None:
    """Migrate a running memtouch guest live: iterations, expected vs measured downtime."""
    from livemig.cli.bench_live import run_live_bench

    run_live_bench(
        size=size_mib << 20,
        touched=[float(t) for t in touched_ratios.split(",")],
        connections=[int(c) for c in connection_counts.split(",")],
        rate_mib=rate_mib,
        downtime_ms=downtime_ms,
        repeat=repeat,
        markdown=markdown,
    )


def main() -> None:
    cli(prog_name="livemig")


if __name__ == "__main__":
    main()

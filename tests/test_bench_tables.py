"""The benchmark's tables: ratios, CPU per GiB moved and the skip comparison, from given cases."""

from __future__ import annotations

from pathlib import Path

from livemig.cli.bench import GIB, Case, cpu_per_gib, receiver_args, scaling_rows, summary_rows


def case(touched: float, connections: int, skip: bool, duration_ms: int, transmitted: int, cpu: float = 1.0) -> Case:
    return Case(
        touched=touched,
        connections=connections,
        skip=skip,
        duration_ms=duration_ms,
        transmitted=transmitted,
        wire=transmitted,
        throughput=0.0,
        payload_throughput=0.0,
        sender_peak_memory=0,
        receiver_peak_memory=0,
        sender_cpu=cpu,
        receiver_cpu=cpu / 2,
        allocated=transmitted,
        ok=True,
        moved=2 * GIB,
    )


CASES = [
    case(1.0, 1, False, 2000, 2 * GIB, cpu=3.0),
    case(1.0, 1, True, 1900, 2 * GIB),
    case(1.0, 2, False, 1000, 2 * GIB),
    case(1.0, 2, True, 1100, 2 * GIB),
    case(0.0, 1, False, 2000, 2 * GIB),
    case(0.0, 1, True, 50, 0),
    case(0.0, 2, False, 1000, 2 * GIB),
    case(0.0, 2, True, 40, 0),
]
CEILINGS = {1: 2.0 * GIB, 2: 4.0 * GIB}


def test_cpu_is_per_gib_of_guest_memory_moved() -> None:
    assert cpu_per_gib(3.0, 2 * GIB) == 1.5
    assert cpu_per_gib(1.0, 0) == 0.0


def test_scaling_rows_relate_each_case_to_one_connection_the_ceiling_and_no_skip() -> None:
    rows = {row[0]: row for row in scaling_rows(CASES, CEILINGS)}
    one = rows["100% touched, no skip, 1 conn"]
    assert one[2:8] == ["1.00", "1.00x", "50 %", "1.50", "0.75", ""]
    two = rows["100% touched, no skip, 2 conn"]
    assert two[2:5] == ["2.00", "2.00x", "50 %"]
    skipped = rows["100% touched, with skip, 2 conn"]
    assert skipped[7] == "110 %"
    nothing_sent = rows["0% touched, with skip, 2 conn"]
    assert nothing_sent[2:5] == ["0.00", "1.25x", "-"]
    assert nothing_sent[7] == "4 %"


def test_summary_has_a_column_per_connection_count() -> None:
    rows = summary_rows(CASES, CEILINGS, [1, 2])
    assert ["100% touched, no skip, payload GiB/s", "1.00", "2.00"] in rows
    assert ["100% touched: skip time as % of no-skip", "95 %", "110 %"] in rows
    assert ["0% touched: skip time as % of no-skip", "2 %", "4 %"] in rows
    assert rows[-1] == ["ceiling: N process pairs of bare gRPC, GiB/s", "2.00", "4.00"]
    assert not any(row[0] == "0% touched, no skip, payload GiB/s" for row in rows)


def test_summary_shows_what_bare_grpc_costs_per_gib() -> None:
    rows = summary_rows(CASES, CEILINGS, [1, 2], ceiling_cpu={1: (2.1, 1.4), 2: (2.25, 1.5)})
    assert rows[-2] == ["ceiling: client CPU s per GiB streamed", "2.10", "2.25"]
    assert rows[-1] == ["ceiling: server CPU s per GiB streamed", "1.40", "1.50"]


def test_receiver_data_workers_only_when_asked() -> None:
    assert "--data-workers" not in receiver_args(Path("/d"), 4 << 20, None)
    assert receiver_args(Path("/d"), 4 << 20, 3)[-2:] == ["--data-workers", "3"]


def test_the_header_states_tmpfs_in_use_and_warns_of_old_files(tmp_path, monkeypatch):
    """Old files on tmpfs slow page allocation on this VM: a benchmark says so before it runs."""
    from livemig.cli import bench

    used, available = bench.memory_state(tmp_path)
    assert used > 0 and available > 0
    monkeypatch.setattr(bench, "TMPFS_LEFTOVER_WARNING_BYTES", used + (1 << 40))
    assert "warning" not in bench.memory_state_line(tmp_path)
    monkeypatch.setattr(bench, "TMPFS_LEFTOVER_WARNING_BYTES", 0)
    line = bench.memory_state_line(tmp_path)
    assert line.startswith(f"{tmp_path}: ") and "MemAvailable" in line and "warning: files left" in line


def test_warming_free_memory_writes_and_leaves_nothing(shm_dir, monkeypatch):
    from livemig.cli import bench

    assert bench.warm_free_memory(shm_dir, 128 << 20) == 128 << 20
    assert not any(shm_dir.iterdir())
    monkeypatch.setattr(bench, "memory_state", lambda _tmpfs: (0, 256 << 20))
    assert bench.warm_free_memory(shm_dir, 1 << 50) == 128 << 20  # at most half of what is available
    assert not any(shm_dir.iterdir())

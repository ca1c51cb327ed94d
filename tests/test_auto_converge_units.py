"""Auto-converge, the smoothed dirty rate and the convergence forecast, as pure units."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from livemig.common.proto import livemig_pb2 as pb
from livemig.sender.convergence import convergence_forecast
from livemig.sender.dirty_rate import DirtyRate
from livemig.sender.migration import iteration_progress
from livemig.sender.throttle import AutoConverge, PidThrottle

MIB = 1 << 20


def test_a_steady_writer_reads_steady_however_short_the_iterations():
    """32 MiB/s with collections 1-14 ms apart once read 1.9 to 305 MB/s."""
    rate = DirtyRate(window_seconds=2.0)
    now = 0.0
    rate.restart(now)
    readings = []
    for gap in [0.2, 0.5, 0.001, 0.014, 0.003, 0.3, 0.002, 0.01] * 10:
        now += gap
        # What the guest dirtied since the previous collection, give or take a page.
        rate.collected(int(32 * MIB * gap) + (4096 if gap < 0.005 else 0), now)
        readings.append(rate.value)
    assert all(28 * MIB < value < 36 * MIB for value in readings[8:])


def test_qemu_s_policy_steps_up_after_two_high_iterations_and_stops_at_99():
    policy = AutoConverge()
    steps = [policy.after_iteration(dirty_rate=10 * MIB, bandwidth=4 * MIB) for _ in range(30)]
    assert steps[:6] == [0, 20, 20, 30, 30, 40]
    assert max(steps) == 99 and steps[-1] == 99
    calm = AutoConverge()
    assert [calm.after_iteration(MIB, 4 * MIB) for _ in range(5)] == [0] * 5  # under half the link
    flicker = AutoConverge()
    assert [flicker.after_iteration(rate, 4 * MIB) for rate in (3 * MIB, MIB, 3 * MIB, MIB)] == [0, 0, 0, 0]


def test_the_forecast_speaks_only_when_the_target_is_out_of_reach():
    assert "dirties 8.0 MiB/s" in convergence_forecast(300, 8 * MIB, 4 * MIB, 0.01, 0.005)
    impossible = convergence_forecast(1, 0.0, 100 * MIB, 0.01, 0.005)  # 5 ms of round trips alone
    assert impossible.startswith("will not converge: needs a downtime of at least 5 ms, the target is 1 ms")
    assert convergence_forecast(300, MIB, 100 * MIB, 0.01, 0.005) == ""
    assert convergence_forecast(300, MIB, 0.0, 0.01, 0.005) == ""  # no bandwidth known: no claim


def test_iteration_progress_counts_the_current_iteration_only():
    stats = pb.MigrationStats(total_bytes=64 * MIB, processed_bytes=(64 + 8 + 2) * MIB)
    iterations = [pb.IterationStats(dirty_bytes=64 * MIB), pb.IterationStats(dirty_bytes=8 * MIB)]
    assert iteration_progress(stats, [iterations[0]]) == stats.processed_bytes
    assert iteration_progress(stats, [*iterations, pb.IterationStats(dirty_bytes=6 * MIB)]) == 2 * MIB


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_a_pid_throttle_holds_the_guest_for_its_share_and_release_leaves_it_running():
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    pidfd = os.pidfd_open(child.pid)
    try:
        throttle = PidThrottle(pidfd, "test")
        throttle.set(60)
        samples = []
        for _ in range(300):  # 1.5 s of 5 ms looks
            samples.append(_state(child.pid) == "T")
            time.sleep(0.005)
        share = sum(samples) / len(samples)
        assert 0.2 < share < 0.95, share  # about 60 %, with a margin no load crosses
        throttle.release()
        time.sleep(0.05)
        assert _state(child.pid) != "T"
        assert all(_state(child.pid) != "T" for _ in range(20))  # and stays so
    finally:
        os.close(pidfd)
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_a_hook_guest_is_told_each_share_and_zero_at_release(tmp_path):
    from livemig.sender.throttle import HookThrottle

    told = tmp_path / "told"
    hook = tmp_path / "throttle.sh"
    hook.write_text(f'#!/bin/sh\necho "$LIVEMIG_MIGRATION_ID $LIVEMIG_THROTTLE_PERCENT" >> {told}\n')
    hook.chmod(0o755)
    throttle = HookThrottle(str(hook), "m1", guest_pid=0)
    throttle.set(20)
    throttle.set(20)  # unchanged: not told again
    throttle.set(30)
    throttle.release()
    assert told.read_text().split("\n")[:-1] == ["m1 20", "m1 30", "m1 0"]

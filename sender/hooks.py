"""Running one of the operator's hook commands (--pause-hook, --resume-hook,
--throttle-hook): words from the sender's command line, never from a request, run
without a shell, bounded in time, told which migration and guest they are for."""

from __future__ import annotations

import os
import shlex
import subprocess

HOOK_TIMEOUT_SECONDS = 30.0


def run_hook(command: str, migration_id: str, guest_pid: int, **extra_env: str) -> None:
    """Run it to the end; raises OSError or subprocess.SubprocessError (exit status, timeout)."""
    env = {**os.environ, "LIVEMIG_MIGRATION_ID": migration_id, "LIVEMIG_GUEST_PID": str(guest_pid), **extra_env}
    subprocess.run(shlex.split(command), env=env, check=True, timeout=HOOK_TIMEOUT_SECONDS)

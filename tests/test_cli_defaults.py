"""The command line's defaults are the services' own (one home each: receiver/limits.py,
sender/defaults.py), whatever text --help shows them in."""

from __future__ import annotations

from livemig.cli.main import cli
from livemig.cli.units import parse_duration, parse_size
from livemig.receiver.limits import ReceiverLimits
from livemig.sender import defaults
from livemig.sender.capacity import MigrationCapacity
from livemig.sender.config import SenderConfig


def option_defaults(command: str) -> dict[str, object]:
    return {p.name: p.default for p in cli.commands[command].params}


def test_receiver_defaults_are_its_limits():
    options, limits = option_defaults("receiver"), ReceiverLimits()
    assert parse_size(options["max_batch_bytes"]) == limits.max_batch_bytes
    assert parse_size(options["max_destination_bytes"]) == limits.max_destination_bytes
    assert parse_duration(options["idle_timeout"]) == limits.idle_timeout_seconds
    for name in ("max_sessions", "data_workers", "max_streams_per_worker", "write_mode", "max_unsettled_batches"):
        assert options[name] == getattr(limits, name), name


def test_sender_defaults_are_its_config():
    options, config = option_defaults("sender"), SenderConfig()
    for name in ("max_watch_streams", "max_watch_streams_per_client", "max_migrations", "max_connections"):
        assert options[name] == getattr(config, name), name
    assert MigrationCapacity().max_migrations == config.max_migrations


def test_request_defaults_are_the_senders():
    options = option_defaults("send-migration")
    assert parse_duration(options["downtime"], "ms") * 1000 == defaults.DEFAULT_DOWNTIME_MS
    help_text = next(p.help for p in cli.commands["send-migration"].params if p.name == "max_iterations")
    assert f"(0: {defaults.DEFAULT_MAX_ITERATIONS})" in help_text

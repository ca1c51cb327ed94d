"""Durations and sizes as operators write them (property tests)."""

from __future__ import annotations

from decimal import Decimal

import click
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from livemig.cli.units import Duration, Size, format_bytes, format_duration, parse_duration, parse_size

UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600), "d": Decimal(86400)}
BINARY = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@given(st.integers(0, 10**9), st.sampled_from(sorted(UNITS)))
def test_duration_with_unit(number, unit):
    assert parse_duration(f"{number}{unit}") == pytest.approx(float(number * UNITS[unit]))


@given(st.integers(0, 10**9), st.sampled_from(sorted(UNITS)))
def test_bare_duration_takes_the_flags_unit(number, unit):
    assert parse_duration(str(number), default_unit=unit) == parse_duration(f"{number}{unit}")


@given(st.integers(0, 10**6), st.sampled_from(sorted(BINARY)), st.sampled_from(["", "i", "iB", "B"]))
def test_size_with_binary_suffix(number, unit, suffix):
    assert parse_size(f"{number}{unit}{suffix}") == number * BINARY[unit]
    assert parse_size(f"{number}{unit.lower()}{suffix.lower()}") == number * BINARY[unit]


@given(st.integers(0, 1 << 50))
def test_bare_size_takes_the_flags_unit(number):
    assert parse_size(str(number)) == number
    assert parse_size(str(number), default_unit="M") == number << 20
    assert parse_size(f"{number}B", default_unit="M") == number  # an explicit B means bytes


@given(st.integers(0, 1 << 40))
@example(14592)  # 14.25 KiB: exactly half a digit, rounded to even ("14.2")
def test_formatted_bytes_are_binary_and_close(count):
    number, unit = format_bytes(count).split()
    scale = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[unit]
    # One decimal: off by at most half its last digit (float noise allowed on the exact half).
    assert abs(float(number) * scale - count) <= 0.05 * scale * (1 + 1e-9)
    assert unit == "TiB" or float(number) <= 1024


@given(st.text(max_size=12))
def test_garbage_is_a_value_error_never_something_else(text):
    for parse in (parse_duration, parse_size):
        try:
            value = parse(text)
        except ValueError:
            continue
        assert value >= 0


@pytest.mark.parametrize("text", ["-1", "1x", "", "ms", "1.5.2s", "1e3", "12 sec", "nan", "inf", "-5m"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text", ["-1", "1X", "", "K", "1.5", "0.1K", "1iB", "4 GB B", "1e3"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_click_types_enforce_ranges():
    with pytest.raises(click.BadParameter, match="at least"):
        Size(min_bytes=4096).convert("1K", None, None)
    with pytest.raises(click.BadParameter, match="at most"):
        Duration(max_seconds=10).convert("1m", None, None)
    assert Size(default_unit="M").convert("1.5G", None, None) == 3 << 29
    assert Duration(default_unit="ms").convert("300", None, None) == pytest.approx(0.3)


def test_bar_speed_is_wire_bytes_not_processed_bytes():
    from livemig.cli.report import WireSpeed, planned_bytes
    from livemig.common.proto import livemig_pb2 as pb

    speed = WireSpeed()
    speed.update(0, now=0.0)
    assert speed.update(1 << 20, now=1.0) == 1 << 20  # 1 MiB on the wire in 1 s, whatever was skipped
    assert speed.update(1 << 20, now=2.0) < 1 << 20  # nothing new on the wire: the speed falls
    status = pb.MigrationStatus(
        stats=pb.MigrationStats(total_bytes=100),
        iterations=[pb.IterationStats(dirty_bytes=100), pb.IterationStats(dirty_bytes=30)],
    )
    assert planned_bytes(status) == 130  # all memory, then each later iteration's dirty pages


@given(st.floats(0, 30 * 86400, allow_nan=False))
def test_every_formatted_duration_parses_back(seconds):
    """Range errors name their limits with format_duration: an operator can type what they read."""
    text = format_duration(seconds)
    assert parse_duration(text) == pytest.approx(seconds, abs=max(0.5, seconds * 0.01))


@pytest.mark.parametrize(("text", "seconds"), [("1h30m", 5400), ("1h00m", 3600), ("8d", 691200), ("4m05s", 245)])
def test_compound_durations_and_days(text, seconds):
    assert parse_duration(text) == seconds


def test_a_range_error_names_a_limit_the_parser_accepts():
    with pytest.raises(click.BadParameter) as refused:
        Duration("ms", min_seconds=0.001, max_seconds=3600).convert("2h", None, None)
    limit = str(refused.value).rpartition("at most ")[2].strip()
    assert parse_duration(limit) == 3600


def test_benchmark_size_options_take_mib_by_default_and_refuse_in_one_line():
    """The benchmarks' --size type: a bare number is MiB; a bad value is argparse's own error."""
    import argparse

    from livemig.cli.units import size_in_mib_by_default

    assert size_in_mib_by_default("16") == 16 << 20
    assert size_in_mib_by_default("2G") == 2 << 30
    assert size_in_mib_by_default("512B") == 512
    parser = argparse.ArgumentParser(prog="bench", exit_on_error=False)
    parser.add_argument("--size", type=size_in_mib_by_default)
    with pytest.raises(argparse.ArgumentError, match="invalid size_in_mib_by_default value: 'foo'"):
        parser.parse_args(["--size", "foo"])

"""Units people already use: durations with ms/s/m/h, sizes with binary K/M/G/T.

Operators come from Cloud Hypervisor, QEMU and libvirt, where `--migration-timeout`
is seconds, downtime is milliseconds and `-m 512` is MiB. A bare number keeps the
unit its flag has always had there (each option names it in --help); a suffix
says it explicitly. Sizes are binary (K = 1024), as guest memory is.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import click

from livemig.common.human import format_bytes

DURATION_UNITS = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_NUMBER = r"(?P<number>\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(_NUMBER + r"\s*(?P<unit>ms|s|m|h|d)?", re.IGNORECASE)
_DURATION_PART = re.compile(_NUMBER + r"\s*(?P<unit>ms|s|m|h|d)\s*", re.IGNORECASE)
_COMPOUND = re.compile(r"(?:" + _DURATION_PART.pattern + r")+", re.IGNORECASE)
_SIZE = re.compile(_NUMBER + r"\s*(?P<unit>[kmgt]?)(?P<suffix>i?b?)", re.IGNORECASE)


def parse_duration(text: str, default_unit: str = "s") -> float:
    """Seconds from '200ms', '12s', '5m', '1.5h', '8d', compounds such as '1h30m' and
    '4m05s' (what format_duration prints), or a bare number in default_unit."""
    text = text.strip()
    match = _DURATION.fullmatch(text)
    if match:
        unit = (match["unit"] or default_unit).lower()
        return float(Decimal(match["number"]) * DURATION_UNITS[unit])
    if _COMPOUND.fullmatch(text):
        return float(
            sum(
                Decimal(part["number"]) * DURATION_UNITS[part["unit"].lower()] for part in _DURATION_PART.finditer(text)
            )
        )
    raise ValueError(f"{text!r} is not a duration (e.g. 200ms, 12s, 5m, 1h30m, 2d)")


def parse_size(text: str, default_unit: str = "") -> int:
    """Bytes from '4096', '4K', '64MiB', '1.5G' (binary units) or a bare number in default_unit."""
    match = _SIZE.fullmatch(text.strip())
    if not match or (match["suffix"] and not match["unit"] and match["suffix"].lower() != "b"):
        raise ValueError(f"{text!r} is not a size (e.g. 4096, 64K, 512M, 2G; binary units)")
    # '512B' is bytes whatever the flag's default unit.
    unit = (match["unit"] or ("" if match["suffix"] else default_unit)).lower()
    try:
        value = Decimal(match["number"]) * SIZE_UNITS[unit]
    except InvalidOperation as error:  # pragma: no cover - the pattern admits only numbers
        raise ValueError(f"{text!r} is not a size") from error
    if value != value.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(value)


def size_in_mib_by_default(text: str) -> int:
    """An argparse `type` for the benchmarks' size options: bytes from 4096, 64K, 512M,
    2G; a bare number is MiB. A bad value is argparse's one-line error (ValueError)."""
    return parse_size(text, "M")


def format_duration(seconds: float) -> str:
    """'850 ms', '12.3 s', '4m05s', '1h02m': each of them parse_duration reads back."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Duration(click.ParamType):
    """A click type: a duration in seconds (float), bare numbers in `default_unit`."""

    name = "duration"

    def __init__(self, default_unit: str = "s", min_seconds: float = 0.0, max_seconds: float | None = None) -> None:
        self.default_unit = default_unit
        self.min_seconds = min_seconds
        self.max_seconds = max_seconds

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "DURATION"

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            seconds = parse_duration(value, self.default_unit)
        except ValueError as error:
            self.fail(str(error), param, ctx)
        if seconds < self.min_seconds or (self.max_seconds is not None and seconds > self.max_seconds):
            bound = f"at least {format_duration(self.min_seconds)}"
            if self.max_seconds is not None:
                bound += f" and at most {format_duration(self.max_seconds)}"
            self.fail(f"{value!r} must be {bound}", param, ctx)
        return seconds


class Size(click.ParamType):
    """A click type: a size in bytes (int), binary suffixes, bare numbers in `default_unit`."""

    name = "size"

    def __init__(self, default_unit: str = "", min_bytes: int = 0, max_bytes: int | None = None) -> None:
        self.default_unit = default_unit
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "SIZE"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        try:
            size = parse_size(str(value), self.default_unit)
        except ValueError as error:
            self.fail(str(error), param, ctx)
        if size < self.min_bytes or (self.max_bytes is not None and size > self.max_bytes):
            bound = f"at least {format_bytes(self.min_bytes)}"
            if self.max_bytes is not None:
                bound += f" and at most {format_bytes(self.max_bytes)}"
            self.fail(f"{value!r} must be {bound}", param, ctx)
        return size

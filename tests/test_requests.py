"""The sender's rule tables: every field of a request is checked at the door.

Pure unit tests of `sender/requests.py`: no file is opened and no process signalled
to reach a verdict (the end-to-end refusals are in tests/test_hostile.py).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from livemig.common.proto import livemig_pb2 as pb
from livemig.sender.config import SenderConfig
from livemig.sender.errors import Reason, SenderError
from livemig.sender.requests import (
    LIMITS_RULES,
    MIGRATION_ID_RULES,
    REGION_RULES,
    START_MIGRATION_RULES,
    validate_limits,
    validate_migration_id,
    validate_start,
)

CONFIG = SenderConfig()
IMAGE = "/dev/shm/guest.img"


def request(**fields) -> pb.StartMigrationRequest:
    fields.setdefault("regions", [pb.GuestMemoryRegion(gpa=0, path=IMAGE)])
    fields.setdefault("destination", "dst-host:7868")
    return pb.StartMigrationRequest(**fields)


def refusal(message, config: SenderConfig = CONFIG) -> SenderError:
    with pytest.raises(SenderError) as raised:
        if isinstance(message, pb.MigrationRequest):
            validate_migration_id(message, config)
        elif isinstance(message, pb.MigrationLimits):
            validate_limits(message, config)
        else:
            validate_start(message, config)
    return raised.value


def test_defaults_of_unset_fields():
    validated = validate_start(request(), CONFIG)
    assert validated.connections == 1 and validated.page_size == 4096
    assert validated.downtime_ms == 300 and validated.max_iterations == 30
    assert validated.available_bandwidth == 0 and not validated.force_on_timeout


def dirty(region_path: str, map_path: str) -> pb.GuestMemoryRegion:
    return pb.GuestMemoryRegion(gpa=0, path=region_path, dirty_log=map_path)


# (request, the field the refusal names): each rule of each table is broken once.
REFUSED = [
    (request(destination=""), "destination"),
    (request(destination="unix:/run/something.sock"), "destination"),
    (request(destination="host:0"), "destination"),
    (request(destination="host:99999"), "destination"),
    (request(destination="a" * 300 + ":1"), "destination"),
    (request(destination="host:1\n"), "destination"),
    (request(regions=[]), "regions"),
    (request(regions=[pb.GuestMemoryRegion(gpa=i << 30, path=IMAGE) for i in range(1025)]), "regions"),
    (request(connections=129), "connections"),
    (request(page_size=3000), "page_size"),
    (request(page_size=1 << 31), "page_size"),
    (request(max_batch_bytes=1), "max_batch_bytes"),
    (request(max_batch_bytes=1 << 40), "max_batch_bytes"),
    (request(downtime_ms=2**32 - 1), "downtime_ms"),
    (request(timeout_ms=2**64 - 1), "timeout_ms"),
    (request(timeout_strategy=7), "timeout_strategy"),
    (request(compression=7), "compression"),
    (request(max_iterations=2**32 - 1), "max_iterations"),
    (request(stall_timeout_ms=2**64 - 1), "stall_timeout_ms"),
    (request(guest_pid=-5), "guest_pid"),
    (request(guest_pid=1), "guest_pid"),
    (request(guest_pid=os.getpid()), "guest_pid"),
    (request(guest_pid=os.getppid()), "guest_pid"),
    (request(qmp_socket="../vm"), "qmp_socket"),
    (request(qmp_socket="/run/livemig/qmp/vm"), "qmp_socket"),
    (request(qmp_socket="a/./vm"), "qmp_socket"),
    (request(qmp_socket="a//vm"), "qmp_socket"),
    (request(qmp_socket="vm/"), "qmp_socket"),
    (request(qmp_socket="v\nm"), "qmp_socket"),
    (request(qmp_socket="v" * 256), "qmp_socket"),
    (request(qmp_socket="vm", guest_pid=12345), "qmp_socket"),
    (request(max_bandwidth_bytes_per_second=math.nan), "max_bandwidth_bytes_per_second"),
    (request(max_bandwidth_bytes_per_second=1.0), "max_bandwidth_bytes_per_second"),
    (request(available_bandwidth_bytes_per_second=math.nan), "available_bandwidth_bytes_per_second"),
    (request(available_bandwidth_bytes_per_second=math.inf), "available_bandwidth_bytes_per_second"),
    (request(available_bandwidth_bytes_per_second=1e-300), "available_bandwidth_bytes_per_second"),
    (request(available_bandwidth_bytes_per_second=-1.0), "available_bandwidth_bytes_per_second"),
    (request(available_bandwidth_bytes_per_second=1e300), "available_bandwidth_bytes_per_second"),
    (
        request(regions=[dirty(IMAGE, IMAGE + ".dirty"), pb.GuestMemoryRegion(gpa=1 << 30, path="/dev/shm/b")]),
        "regions.dirty_log",
    ),
    (request(regions=[pb.GuestMemoryRegion(gpa=0, path="")]), "regions[0].path"),
    (request(regions=[pb.GuestMemoryRegion(gpa=0, path="/dev/shm/a\nb")]), "regions[0].path"),
    (request(regions=[pb.GuestMemoryRegion(gpa=0, path="/" + "a" * 5000)]), "regions[0].path"),
    (request(regions=[dirty(IMAGE, "/etc/passwd")]), "regions[0].dirty_log"),
    (request(regions=[dirty(IMAGE, "/dev/shm/other.img.dirty")]), "regions[0].dirty_log"),
    (pb.MigrationLimits(migration_id="m", downtime_ms=0), "downtime_ms"),
    (pb.MigrationLimits(migration_id="m", max_bandwidth_bytes_per_second=math.inf), "max_bandwidth_bytes_per_second"),
    (pb.MigrationLimits(migration_id="m", max_iterations=0), "max_iterations"),
    (pb.MigrationLimits(migration_id="m"), "no limit given"),
    (pb.MigrationRequest(), "migration_id"),
    (pb.MigrationRequest(migration_id="x" * 65), "migration_id"),
    (pb.MigrationRequest(migration_id="id\nforged log line"), "migration_id"),
    (pb.MigrationRequest(migration_id="../../etc"), "migration_id"),
    (pb.MigrationRequest(migration_id="abc\n"), "migration_id"),
]


@pytest.mark.parametrize(("message", "field"), REFUSED, ids=[f"{i}-{f}" for i, (_, f) in enumerate(REFUSED)])
def test_each_rule_refuses_with_invalid_argument_naming_its_field(message, field):
    error = refusal(message)
    assert error.reason is Reason.INVALID
    assert error.message.startswith(field), error.message
    assert len(error.message) < 1000  # a huge value is not echoed whole


def test_every_rule_of_every_table_is_exercised():
    """A rule without a refusal case above would be untested."""
    fields = {f.split("[0].")[-1] for _, f in REFUSED}
    for rule in (*START_MIGRATION_RULES, *REGION_RULES, *MIGRATION_ID_RULES, *LIMITS_RULES):
        assert rule.field.rsplit(".", 1)[-1] in fields, rule.field


def test_a_qmp_socket_needs_a_sender_with_a_qmp_dir():
    error = refusal(request(qmp_socket="vm"))
    assert error.reason is Reason.GUEST and "--qmp-dir" in error.message
    validate_start(request(qmp_socket="guests/vm-1.qmp"), SenderConfig(qmp_dir=Path("/run/livemig/qmp")))


def test_dirty_log_is_the_sibling_or_in_the_dirty_log_dir():
    validate_start(request(regions=[dirty(IMAGE, IMAGE + ".dirty")]), CONFIG)
    in_dir = SenderConfig(dirty_log_dir=Path("/run/livemig/dirty"))
    validate_start(request(regions=[dirty(IMAGE, "/run/livemig/dirty/guest.img.dirty")]), in_dir)
    assert refusal(request(regions=[dirty(IMAGE, IMAGE + ".dirty")]), in_dir).reason is Reason.INVALID


def test_two_regions_may_not_share_a_map():
    in_dir = SenderConfig(dirty_log_dir=Path("/run/d"))
    regions = [dirty("/a/guest.img", "/run/d/guest.img.dirty"), dirty("/b/guest.img", "/run/d/guest.img.dirty")]
    regions[1].gpa = 1 << 30
    assert "different map" in refusal(request(regions=regions), in_dir).message


def test_accepted_extremes():
    validate_start(
        request(
            connections=128,
            page_size=1 << 30,
            max_batch_bytes=64 << 20,
            downtime_ms=3_600_000,
            max_iterations=100_000,
            available_bandwidth_bytes_per_second=1e3,
            destination="[::1]:7868",
        ),
        CONFIG,
    )
    assert validate_migration_id(pb.MigrationRequest(migration_id="a" * 64), CONFIG) == "a" * 64


def test_compression_is_carried_into_the_migration_request():
    assert validate_start(request(), SenderConfig()).compression == pb.COMPRESSION_NONE
    assert validate_start(request(compression=pb.COMPRESSION_LZ4), SenderConfig()).compression == pb.COMPRESSION_LZ4

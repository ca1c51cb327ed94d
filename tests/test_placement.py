"""The sender places regions without a GPA from its own view of the files."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemig.cli.images import make_image
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.sender.placement import place, place_request_regions
from tests.helpers import assert_destination_equals_source, run_cli, sender_stub, watch

MIB = 1 << 20
PAGE = 4096


def test_unplaced_regions_follow_the_previous_one():
    assert place([None, None, 0x1000_0000, None], [MIB, 2 * MIB, MIB, MIB]) == [0, MIB, 0x1000_0000, 0x1010_0000]


@given(
    st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 1 << 40)), st.integers(0, 1 << 30)), min_size=1, max_size=12)
)
def test_placement_keeps_explicit_gpas_and_packs_the_rest(regions):
    gpas = [gpa for gpa, _ in regions]
    sizes = [size for _, size in regions]
    placed = place(gpas, sizes)
    assert len(placed) == len(regions)
    for index, (gpa, start) in enumerate(zip(gpas, placed, strict=True)):
        if gpa is not None:
            assert start == gpa
        elif index == 0:
            assert start == 0
        else:
            assert start == placed[index - 1] + sizes[index - 1]


def test_request_regions_sorted_and_explicit_zero_kept(shm_dir):
    a, b = shm_dir / "a.img", shm_dir / "b.img"
    a.write_bytes(b"\0" * (2 * PAGE))
    b.write_bytes(b"\0" * PAGE)
    regions = [pb.GuestMemoryRegion(path=str(b), gpa=1 << 30), pb.GuestMemoryRegion(path=str(a), gpa=0)]
    assert [(r.gpa, r.path) for r in place_request_regions(regions)] == [(0, str(a)), (1 << 30, str(b))]
    regions = [pb.GuestMemoryRegion(path=str(a)), pb.GuestMemoryRegion(path=str(b))]
    assert [r.gpa for r in place_request_regions(regions)] == [0, 2 * PAGE]


@pytest.mark.e2e
def test_client_that_cannot_see_the_files_gets_them_placed_by_the_sender(receiver, shm_dir, tmp_path):
    """The sender runs in a folder where the relative paths exist; the client runs where they
    do not (as on another host). A client-side placement would see no sizes and overlap them."""
    sender_home = shm_dir / "sender-home"
    sender_home.mkdir()
    for index, size in enumerate((3 * MIB, 2 * MIB)):
        make_image(sender_home / f"region{index}.img", size, 0.5, seed=index)
    with ServiceProcess("sender", [], cwd=sender_home) as sender:
        result = run_cli(
            "send-migration",
            "--insecure",
            "--sender",
            sender.address,
            "--destination",
            receiver.address,
            "--memory",
            "region0.img",
            "--memory",
            "region1.img",
            "--detach",
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        migration_id = result.stdout.strip()
        channel, stub = sender_stub(sender.address)
        with channel:
            status = watch(stub, migration_id)
    assert status.state == pb.COMPLETED, status.error
    assert_destination_equals_source(status, [(0, sender_home / "region0.img"), (3 * MIB, sender_home / "region1.img")])

"""Digest of all guest memory, in gpa order, for the end-to-end verify step.

xxh3-128: non-cryptographic but ~10x faster than SHA-256 here, and the check
guards against bugs and corruption, not against an attacker (TLS does that).
"""

from __future__ import annotations

import xxhash

from livemig.common.guest_memory import MemoryLayout

DIGEST_NAME = "xxh3-128"


def memory_digest(layout: MemoryLayout) -> bytes:
    hasher = xxhash.xxh3_128()
    for region in layout.regions:
        # Bind the layout too: the same bytes at other addresses are other memory.
        hasher.update(region.gpa.to_bytes(8, "little") + region.length.to_bytes(8, "little"))
    for block in layout.iter_blocks():
        hasher.update(block)
    return hasher.digest()

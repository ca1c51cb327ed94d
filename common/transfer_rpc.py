"""The TransferPages call as both ends name it: taken from the generated code, not typed by hand.

Both ends handle TransferPages as raw bytes (common/wire.py), through gRPC's generic
API, so neither uses the generated stub or servicer that would carry these names.
"""

from __future__ import annotations

from livemig.common.proto import livemig_pb2 as pb

_TRANSFER_PAGES = pb.DESCRIPTOR.services_by_name["Receiver"].methods_by_name["TransferPages"]

RECEIVER_SERVICE = _TRANSFER_PAGES.containing_service.full_name  # livemig.v1.Receiver
TRANSFER_PAGES = _TRANSFER_PAGES.name
TRANSFER_METHOD = f"/{RECEIVER_SERVICE}/{TRANSFER_PAGES}"  # the path the sender's stream calls
# The metadata entry that binds a stream to its session before its first batch.
SESSION_METADATA = "livemig-session"

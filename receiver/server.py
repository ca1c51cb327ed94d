"""Receiver process: gRPC server and metrics endpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.transport import ServiceHost, message_limit
from livemig.receiver.registry import ReceiverLimits, SessionRegistry
from livemig.receiver.service import ReceiverService

log = logging.getLogger("livemig.receiver")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Receiver"].full_name
MAX_STREAMS = 256  # 128 connections from each of two senders at once


class _HandlerRecorder:
    """Captures the generated handler table so one entry can be swapped."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, _service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers = dict(handlers)


def add_receiver_service(service: ReceiverService, server: grpc.Server) -> None:
    """Register the servicer with TransferPages taking raw bytes (decoded in common/wire.py)."""
    recorder = _HandlerRecorder()
    pb_grpc.add_ReceiverServicer_to_server(service, recorder)
    handlers = recorder.handlers
    handlers["TransferPages"] = grpc.stream_stream_rpc_method_handler(
        service.TransferPages,
        request_deserializer=None,
        response_serializer=pb.PageBatchAck.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def build_receiver(memory_dir: Path, limits: ReceiverLimits | None = None) -> tuple[ServiceHost, SessionRegistry]:
    limits = limits or ReceiverLimits()
    memory_dir.mkdir(parents=True, exist_ok=True)
    registry = SessionRegistry(memory_dir, limits)
    host = ServiceHost(
        [SERVICE_NAME], max_workers=MAX_STREAMS + 16, max_message_bytes=message_limit(limits.max_batch_bytes)
    )
    add_receiver_service(ReceiverService(registry), host.server)
    return host, registry

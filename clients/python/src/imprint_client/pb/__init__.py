"""Messages and stubs generated from proto/imprint/v1/*.proto when the
wheel is built (setup.py); never edited, never committed."""

from . import (
    agent_pb2,
    agent_pb2_grpc,
    images_pb2,
    images_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
)

__all__ = [
    "agent_pb2",
    "agent_pb2_grpc",
    "images_pb2",
    "images_pb2_grpc",
    "operations_pb2",
    "operations_pb2_grpc",
]

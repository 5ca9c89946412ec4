"""Errors: every non-OK gRPC status, and operations that did not succeed."""

from __future__ import annotations

import grpc

from .pb import agent_pb2, operations_pb2

# google.rpc.Code numbers (Operation.error_code) to grpc's enum.
_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


class ImprintError(Exception):
    """A call the daemon (or the transport) answered with a non-OK status."""

    code: grpc.StatusCode
    details: str

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc(cls, e: grpc.RpcError) -> ImprintError:
        """The status of a failed call (UNKNOWN when it carries none)."""
        code = e.code() if isinstance(e, grpc.Call) else None
        details = e.details() if isinstance(e, grpc.Call) else None
        return cls(code or grpc.StatusCode.UNKNOWN, details or str(e))


class OperationFailed(ImprintError):
    """An operation ended FAILED or CANCELLED; ``operation`` is its final state.

    ``code`` is the operation's ``error_code``; without one, UNKNOWN for a
    failure and CANCELLED for a cancellation.
    """

    operation: operations_pb2.Operation

    def __init__(self, operation: operations_pb2.Operation) -> None:
        cancelled = operation.state == agent_pb2.OPERATION_STATE_CANCELLED
        code = _BY_NUMBER.get(operation.error_code)
        if code is None or code is grpc.StatusCode.OK:
            code = grpc.StatusCode.CANCELLED if cancelled else grpc.StatusCode.UNKNOWN
        state = agent_pb2.OperationState.Name(operation.state).removeprefix("OPERATION_STATE_")
        details = operation.error or f"operation {operation.id} ended {state.lower()}"
        super().__init__(code, details)
        self.operation = operation

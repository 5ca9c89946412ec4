"""Python client of imprintd, the imprint control daemon.

    from imprint_client import Client
    with Client() as c:                      # IMPRINT_ENDPOINT, IMPRINT_TOKEN, IMPRINT_CA
        op = c.capture("kvm-01", "web1", "web-2026-11")
        done = c.wait(op, progress=lambda o: print(o.phase, o.bytes_done))

Every non-OK gRPC status raises :class:`ImprintError` (``code``,
``details``); an operation that ends failed or cancelled raises
:class:`OperationFailed` from :meth:`Client.wait`. ``pb`` holds the
generated message and stub modules.
"""

from . import pb
from ._client import Client
from ._errors import ImprintError, OperationFailed

__all__ = ["Client", "ImprintError", "OperationFailed", "pb"]

"""The client: one channel to imprintd, the token on every call."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar, Union
from urllib.parse import urlsplit

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from ._errors import ImprintError, OperationFailed
from .pb import agent_pb2, images_pb2, images_pb2_grpc, operations_pb2, operations_pb2_grpc

Image = images_pb2.Image
Operation = operations_pb2.Operation
Host = operations_pb2.Host
HostGuest = operations_pb2.HostGuest
NetworkConfig = agent_pb2.NetworkConfig
Progress = Callable[[Operation], None]

DEFAULT_ENDPOINT = "http://127.0.0.1:7340"
CONFIG_KEYS = ("endpoint", "token", "ca")
UPDATABLE = (
    "name",
    "notes",
    "tags",
    "recommended_profiles",
    "min_vcpus",
    "min_memory_mib",
    "min_disk_bytes",
    "hardware",
)
_RUNNING = (agent_pb2.OPERATION_STATE_UNSPECIFIED, agent_pb2.OPERATION_STATE_RUNNING)

R = TypeVar("R")
M = TypeVar("M", bound=Message)
EnumArg = Union[int, str, None]


@dataclass(frozen=True)
class Settings:
    """Where and who, resolved as the CLI does."""

    endpoint: str
    token: Optional[str]
    ca: Optional[str]


def _config_file() -> dict[str, Any]:
    """The CLI's config file: $IMPRINT_CONFIG (must exist), else
    ~/.config/imprint/config.toml (if it exists)."""
    explicit = os.environ.get("IMPRINT_CONFIG") or None
    if explicit:
        path = Path(explicit)
    elif os.environ.get("HOME"):
        path = Path(os.environ["HOME"], ".config", "imprint", "config.toml")
        if not path.exists():
            return {}
    else:
        return {}
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        raise ValueError(f"reading the config file {path} needs Python 3.11 (tomllib)") from None
    with open(path, "rb") as f:
        data = tomllib.load(f)
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"config {path}: unknown keys {unknown} (endpoint, token, ca)")
    return data


def resolve(endpoint: Optional[str], token: Optional[str], ca: Optional[str]) -> Settings:
    """Arguments, then IMPRINT_ENDPOINT / IMPRINT_TOKEN / IMPRINT_CA, then
    the config file; the endpoint defaults to http://127.0.0.1:7340."""
    values = {
        "endpoint": endpoint or os.environ.get("IMPRINT_ENDPOINT") or None,
        "token": token or os.environ.get("IMPRINT_TOKEN") or None,
        "ca": ca or os.environ.get("IMPRINT_CA") or None,
    }
    if any(v is None for v in values.values()):
        file = _config_file()
        values = {k: v if v is not None else file.get(k) for k, v in values.items()}
    return Settings(
        endpoint=str(values["endpoint"] or DEFAULT_ENDPOINT),
        token=str(values["token"]) if values["token"] else None,
        ca=str(values["ca"]) if values["ca"] else None,
    )


def _channel(s: Settings) -> grpc.Channel:
    url = urlsplit(s.endpoint)
    if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/"):
        raise ValueError(f"endpoint {s.endpoint!r} is not an http:// or https:// URL of the daemon")
    port = url.port or (443 if url.scheme == "https" else 80)
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    target = f"{host}:{port}"
    if url.scheme == "http":
        return grpc.insecure_channel(target)
    # Only the deployment's own CA is trusted, as by the CLI.
    if not s.ca:
        raise ValueError(
            "an https:// endpoint needs the CA that signed the daemon's certificate (ca= or IMPRINT_CA)"
        )
    creds = grpc.ssl_channel_credentials(root_certificates=Path(s.ca).read_bytes())
    return grpc.secure_channel(target, creds)


def enum_value(enum: Any, prefix: str, value: EnumArg) -> int:
    """A proto enum value from its number, its name or its short name
    (``"live"``, ``"crash-consistent"``, ``"CAPTURE_MODE_LIVE"``); None is 0."""
    if value is None:
        return 0
    if isinstance(value, int):
        if value not in enum.values():
            raise ValueError(f"{value} is not a {prefix.rstrip('_')} value")
        return value
    name = value.strip().upper().replace("-", "_")
    if not name.startswith(prefix):
        name = prefix + name
    try:
        return int(enum.Value(name))
    except ValueError:
        allowed = [n.removeprefix(prefix).lower() for n in enum.keys() if not n.endswith("_UNSPECIFIED")]
        raise ValueError(f"unknown value {value!r} ({', '.join(allowed)})") from None


def message(cls: type[M], value: Union[None, M, Mapping[str, Any]], what: str) -> Optional[M]:
    """A ``cls`` message from a dict with the proto's field names (or as is)."""
    if value is None or isinstance(value, cls):
        return value
    try:
        return json_format.ParseDict(dict(value), cls())
    except json_format.ParseError as e:
        raise ValueError(f"{what}: {e}") from None


def network_config(network: Union[None, NetworkConfig, Mapping[str, Any]]) -> Optional[NetworkConfig]:
    """A NetworkConfig from a dict with the proto's field names (or as is)."""
    return message(NetworkConfig, network, "network")


def _strings(values: Union[str, Iterable[str]]) -> list[str]:
    return [values] if isinstance(values, str) else list(values)


class Client:
    """imprintd's API. The raw stubs (``images``, ``operations``, ``hosts``,
    ``guests``, ``profiles``, ``accounts``) serve what the methods do not
    wrap, through :meth:`call`."""

    def __init__(
        self,
        endpoint: Optional[str] = None,
        token: Optional[str] = None,
        ca: Optional[str] = None,
        timeout: float = 60.0,
    ) -> None:
        """Arguments left None come from the environment, then the config
        file, as for the CLI. Connects lazily: the first call reports an
        unreachable daemon (UNAVAILABLE). ``timeout``: per call, seconds."""
        s = resolve(endpoint, token, ca)
        if s.token is not None and not (s.token.isascii() and s.token.isprintable()):
            raise ValueError("the token must be printable ASCII")
        self.endpoint = s.endpoint
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {s.token}"),) if s.token else ()
        self._channel = _channel(s)
        self.images = images_pb2_grpc.ImageServiceStub(self._channel)
        self.profiles = images_pb2_grpc.ProfileServiceStub(self._channel)
        self.operations = operations_pb2_grpc.OperationServiceStub(self._channel)
        self.hosts = operations_pb2_grpc.HostServiceStub(self._channel)
        self.guests = operations_pb2_grpc.GuestServiceStub(self._channel)
        self.accounts = operations_pb2_grpc.AccountServiceStub(self._channel)

    @classmethod
    def from_env(cls) -> Client:
        """Endpoint, token and CA from IMPRINT_* (then the config file)."""
        return cls()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, rpc: Callable[..., R], request: Message) -> R:
        """``rpc(request)`` (a unary method of a stub here) with the token;
        a non-OK status raises :class:`ImprintError`."""
        try:
            return rpc(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            raise ImprintError.from_rpc(e) from e

    # Images

    def get_image(self, image_id: str) -> Image:
        return self.call(self.images.GetImage, images_pb2.GetImageRequest(id=image_id))

    def list_images(
        self,
        *,
        owner: str = "",
        name_prefix: str = "",
        tag: str = "",
        visibility: EnumArg = None,
        state: EnumArg = None,
    ) -> list[Image]:
        """Every image the caller sees that matches (all pages). Without
        ``state``, deprecated images are left out (the daemon's default)."""
        req = images_pb2.ListImagesRequest(
            owner=owner,
            name_prefix=name_prefix,
            tag=tag,
            visibility=enum_value(images_pb2.Visibility, "VISIBILITY_", visibility),
            state=enum_value(images_pb2.ImageState, "IMAGE_STATE_", state),
        )
        images: list[Image] = []
        while True:
            page = self.call(self.images.ListImages, req)
            images.extend(page.images)
            if not page.next_page_token:
                return images
            req.page_token = page.next_page_token

    def find_image(self, name: str, *, owner: str = "") -> Optional[Image]:
        """The image named exactly ``name`` (deprecated ones included), or None.

        Among several, the caller's own are preferred (those it provably
        owns: private ones, or ones with share members, which only owners
        see), then any but FAILED, then the newest. Several owners left and
        no ``owner``: FAILED_PRECONDITION (use an id, or pass owner).
        """
        by_id = {
            i.id: i
            for state in (None, images_pb2.IMAGE_STATE_DEPRECATED)
            for i in self.list_images(owner=owner, name_prefix=name, state=state)
            if i.name == name
        }
        found = list(by_id.values())
        if not found:
            return None
        own = [i for i in found if i.visibility == images_pb2.VISIBILITY_PRIVATE or len(i.members) > 0]
        pool = own or found
        owners = sorted({i.owner for i in pool})
        if len(owners) > 1:
            raise ImprintError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"images named {name!r} of several accounts ({', '.join(owners)}) are visible: "
                "pass owner= or use an image id",
            )
        pool.sort(key=lambda i: (i.state != images_pb2.IMAGE_STATE_FAILED, i.created_unix), reverse=True)
        return pool[0]

    def capture(
        self,
        host: str,
        guest: str,
        name: str,
        *,
        notes: str = "",
        tags: Iterable[str] = (),
        exclude_disks: Iterable[str] = (),
        mode: EnumArg = None,
        shutdown_timeout_seconds: int = 0,
        allow_force_off: bool = False,
        freeze_timeout_seconds: int = 0,
        seal: bool = False,
        request_id: Optional[str] = None,
    ) -> Operation:
        """Start capturing ``guest`` of ``host``; follow it with :meth:`wait`.
        ``mode``: "offline" (default), "live", "crash-consistent".
        ``seal``: store the image generalized (virt-sysprep), so every
        deploy starts without the source's identity."""
        req = images_pb2.CaptureImageRequest(
            request_id=request_id or "",
            host=host,
            guest=guest,
            name=name,
            notes=notes,
            tags=_strings(tags),
            exclude_disks=_strings(exclude_disks),
            shutdown_timeout_seconds=shutdown_timeout_seconds,
            allow_force_off=allow_force_off,
            mode=enum_value(agent_pb2.CaptureMode, "CAPTURE_MODE_", mode),
            freeze_timeout_seconds=freeze_timeout_seconds,
            seal=seal,
        )
        return self.call(self.images.CaptureImage, req)

    def deploy(
        self,
        image_id: str,
        host: str,
        guest_name: str,
        *,
        pool: str = "",
        vcpus: int = 0,
        memory_mib: int = 0,
        disk_sizes_bytes: Iterable[int] = (),
        disk_format: EnumArg = None,
        network: Union[None, NetworkConfig, Mapping[str, Any]] = None,
        user_data: str = "",
        start: bool = True,
        profile: str = "",
        lazy: Optional[bool] = None,
        keep_identity: bool = False,
        request_id: Optional[str] = None,
    ) -> Operation:
        """Start deploying an image as guest ``guest_name`` of ``host``.
        ``network``: a NetworkConfig or a dict with its field names, e.g.
        ``{"hostname": "web7", "interfaces": [{"addresses": ["192.0.2.7/24"],
        "gateway4": "192.0.2.1", "nameservers": ["192.0.2.53"]}]}``.
        ``lazy``: ``None`` leaves it to the daemon (lazy where it can be,
        by default); ``True`` or ``False`` decides."""
        req = images_pb2.DeployImageRequest(
            request_id=request_id or "",
            image_id=image_id,
            host=host,
            guest_name=guest_name,
            pool=pool,
            disk_format=enum_value(agent_pb2.DiskFormat, "DISK_FORMAT_", disk_format),
            disk_sizes_bytes=list(disk_sizes_bytes),
            vcpus=vcpus,
            memory_mib=memory_mib,
            network=network_config(network),
            user_data=user_data,
            start=start,
            profile=profile,
            keep_identity=keep_identity,
        )
        if lazy is not None:
            req.lazy = lazy
        return self.call(self.images.DeployImage, req)

    def update_image(self, image_id: str, **fields: Any) -> Image:
        """Change the given fields only (the update mask is their names):
        name, notes, tags, recommended_profiles, min_vcpus, min_memory_mib,
        min_disk_bytes, hardware (a HardwareProfile or a dict)."""
        unknown = sorted(set(fields) - set(UPDATABLE))
        if unknown:
            raise TypeError(f"update_image: unknown fields {unknown} ({', '.join(UPDATABLE)})")
        values = dict(fields)
        for repeated in ("tags", "recommended_profiles"):
            if repeated in values:
                values[repeated] = _strings(values[repeated])
        if "hardware" in values:
            values["hardware"] = message(agent_pb2.HardwareProfile, values["hardware"], "hardware")
        req = images_pb2.UpdateImageRequest(id=image_id, update_mask=list(fields), **values)
        return self.call(self.images.UpdateImage, req)

    def share_image(self, image_id: str, accounts: Union[str, Iterable[str]]) -> Image:
        req = images_pb2.ShareImageRequest(id=image_id, accounts=_strings(accounts))
        return self.call(self.images.ShareImage, req)

    def unshare_image(self, image_id: str, accounts: Union[str, Iterable[str]]) -> Image:
        req = images_pb2.ShareImageRequest(id=image_id, accounts=_strings(accounts))
        return self.call(self.images.UnshareImage, req)

    def accept_share(self, image_id: str) -> Image:
        """As the account an image was shared with: list it from now on."""
        return self.call(self.images.AcceptShare, images_pb2.ShareDecisionRequest(id=image_id))

    def reject_share(self, image_id: str) -> Image:
        return self.call(self.images.RejectShare, images_pb2.ShareDecisionRequest(id=image_id))

    def publish_image(self, image_id: str, *, force: bool = False) -> Image:
        """Make it public; ``force``: even if its last lint found errors."""
        req = images_pb2.PublishImageRequest(id=image_id, force=force)
        return self.call(self.images.PublishImage, req)

    def unpublish_image(self, image_id: str) -> Image:
        return self.call(self.images.UnpublishImage, images_pb2.PublishImageRequest(id=image_id))

    def delete_image(self, image_id: str, *, request_id: Optional[str] = None) -> Operation:
        req = images_pb2.DeleteImageRequest(id=image_id, request_id=request_id or "")
        return self.call(self.images.DeleteImage, req)

    # Operations

    def get_operation(self, op_id: str) -> Operation:
        return self.call(self.operations.GetOperation, operations_pb2.GetDaemonOperationRequest(id=op_id))

    def cancel_operation(self, op_id: str) -> Operation:
        return self.call(self.operations.CancelOperation, operations_pb2.GetDaemonOperationRequest(id=op_id))

    def wait(
        self,
        op: Union[Operation, str],
        *,
        progress: Optional[Progress] = None,
        timeout: Optional[float] = None,
    ) -> Operation:
        """Follow an operation (WatchOperation) until it ends, calling
        ``progress(op)`` on every update; the final state if it succeeded.

        Raises :class:`OperationFailed` if it failed or was cancelled,
        ``TimeoutError`` after ``timeout`` seconds (the operation goes on),
        :class:`ImprintError` if the watch itself fails.
        """
        op_id = op if isinstance(op, str) else op.id
        deadline = None if timeout is None else time.monotonic() + timeout
        req = operations_pb2.GetDaemonOperationRequest(id=op_id)
        last: Optional[Operation] = None
        # The daemon ends the stream with the final state; a stream that
        # ends before (the daemon stopping) is watched again.
        while last is None or last.state in _RUNNING:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"operation {op_id} still runs after {timeout} s")
            stream = self.operations.WatchOperation(req, metadata=self._metadata, timeout=left)
            updates = 0
            try:
                for cur in stream:
                    last, updates = cur, updates + 1
                    if progress is not None:
                        progress(cur)
            except grpc.RpcError as e:
                if deadline is not None and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError(f"operation {op_id} still runs after {timeout} s") from None
                raise ImprintError.from_rpc(e) from e
            finally:
                stream.cancel()
            if updates == 0:
                raise ImprintError(grpc.StatusCode.UNKNOWN, f"the watch of operation {op_id} ended without an update")
        if last.state != agent_pb2.OPERATION_STATE_SUCCEEDED:
            raise OperationFailed(last)
        return last

    # Hosts and guests

    def list_hosts(self) -> list[Host]:
        return list(self.call(self.hosts.ListHosts, operations_pb2.ListHostsRequest()).hosts)

    def list_guests(self, host: str) -> list[HostGuest]:
        """The caller's guests on ``host`` (admins: every guest, with owners)."""
        req = operations_pb2.ListHostGuestsRequest(host=host)
        return list(self.call(self.guests.ListGuests, req).guests)

    def delete_guest(self, host: str, guest: str, *, request_id: Optional[str] = None) -> Operation:
        """Delete guest ``guest`` (name or UUID) of ``host``: an operation
        (kind ``delete-guest``; follow it with :meth:`wait`) that forces it
        off, deletes the pool volumes of its disks and undefines it. A guest
        the caller does not own (admins: any) is NOT_FOUND, like a missing
        one; one being captured, deployed or deleted FAILED_PRECONDITION."""
        req = operations_pb2.DeleteGuestRequest(host=host, guest=guest, request_id=request_id or "")
        return self.call(self.guests.DeleteGuest, req)

    @staticmethod
    def to_dict(msg: Message) -> dict[str, Any]:
        """A message as a dict with the proto's field names (JSON mapping:
        enums by name, 64-bit integers as strings, defaults left out)."""
        return json_format.MessageToDict(msg, preserving_proto_field_name=True)

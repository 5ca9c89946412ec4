"""What needs no daemon: settings, dict → message, enum names, error
mapping, and the wrapper's calls against an in-process fake server."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from imprint_client import Client, ImprintError, OperationFailed, pb
from imprint_client._client import DEFAULT_ENDPOINT, enum_value, network_config, resolve

agent_pb2, images_pb2, operations_pb2 = pb.agent_pb2, pb.images_pb2, pb.operations_pb2


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ("IMPRINT_ENDPOINT", "IMPRINT_TOKEN", "IMPRINT_CA", "IMPRINT_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_settings_arguments_then_env_then_config_file(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve(None, None, None).endpoint == DEFAULT_ENDPOINT
    cfg = clean_env / ".config" / "imprint" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('endpoint = "https://file:7340"\ntoken = "imp_file"\nca = "/file/ca.pem"\n')
    assert resolve(None, None, None).token == "imp_file"
    monkeypatch.setenv("IMPRINT_TOKEN", "imp_env")
    monkeypatch.setenv("IMPRINT_ENDPOINT", "http://env:7340")
    s = resolve(None, None, None)
    assert (s.endpoint, s.token, s.ca) == ("http://env:7340", "imp_env", "/file/ca.pem")
    assert resolve("http://arg:1", "imp_arg", None).token == "imp_arg"
    monkeypatch.setenv("IMPRINT_CONFIG", str(clean_env / "missing.toml"))
    with pytest.raises(FileNotFoundError):
        resolve(None, None, None)


def test_config_file_with_unknown_keys_is_refused(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = clean_env / "c.toml"
    cfg.write_text('endpoint = "http://x:1"\ntokn = "typo"\n')
    monkeypatch.setenv("IMPRINT_CONFIG", str(cfg))
    with pytest.raises(ValueError, match="tokn"):
        resolve(None, None, None)


def test_https_needs_a_ca_and_endpoints_are_urls(clean_env: Path) -> None:
    with pytest.raises(ValueError, match="IMPRINT_CA"):
        Client(endpoint="https://imprint.example.net:7340", token="t")
    with pytest.raises(ValueError, match="not an http"):
        Client(endpoint="imprint.example.net:7340", token="t")
    with pytest.raises(ValueError, match="printable ASCII"):
        Client(endpoint="http://127.0.0.1:1", token="imp_\u00e9")


def test_network_dict_becomes_network_config() -> None:
    net = network_config(
        {
            "hostname": "web7",
            "interfaces": [
                {
                    "addresses": ["192.0.2.7/24"],
                    "gateway4": "192.0.2.1",
                    "nameservers": ["192.0.2.53"],
                    "gateway_on_link": True,
                }
            ],
        }
    )
    assert isinstance(net, agent_pb2.NetworkConfig)
    assert net.hostname == "web7"
    assert list(net.interfaces[0].addresses) == ["192.0.2.7/24"]
    assert net.interfaces[0].gateway_on_link
    assert network_config(None) is None
    assert network_config(net) is net
    with pytest.raises(ValueError, match="gateway"):
        network_config({"interfaces": [{"gateway": "192.0.2.1"}]})


def test_enum_values_by_number_name_and_short_name() -> None:
    mode = agent_pb2.CaptureMode
    assert enum_value(mode, "CAPTURE_MODE_", None) == 0
    assert enum_value(mode, "CAPTURE_MODE_", "live") == agent_pb2.CAPTURE_MODE_LIVE
    assert enum_value(mode, "CAPTURE_MODE_", "crash-consistent") == agent_pb2.CAPTURE_MODE_CRASH_CONSISTENT
    assert enum_value(mode, "CAPTURE_MODE_", "CAPTURE_MODE_OFFLINE") == agent_pb2.CAPTURE_MODE_OFFLINE
    assert enum_value(images_pb2.Visibility, "VISIBILITY_", images_pb2.VISIBILITY_PUBLIC) == 3
    with pytest.raises(ValueError, match="offline, live, crash_consistent"):
        enum_value(mode, "CAPTURE_MODE_", "hot")
    with pytest.raises(ValueError):
        enum_value(mode, "CAPTURE_MODE_", 42)


def test_error_strings_and_operation_codes() -> None:
    e = ImprintError(grpc.StatusCode.NOT_FOUND, "image x not found")
    assert str(e) == "NOT_FOUND: image x not found"
    failed = operations_pb2.Operation(
        id="op1",
        state=agent_pb2.OPERATION_STATE_FAILED,
        error="guest g did not power off",
        error_code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
    )
    f = OperationFailed(failed)
    assert isinstance(f, ImprintError)
    assert f.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert str(f) == "DEADLINE_EXCEEDED: guest g did not power off"
    assert f.operation is failed
    no_code = OperationFailed(operations_pb2.Operation(id="op2", state=agent_pb2.OPERATION_STATE_FAILED))
    assert no_code.code is grpc.StatusCode.UNKNOWN
    assert no_code.details == "operation op2 ended failed"
    cancelled = OperationFailed(operations_pb2.Operation(id="op3", state=agent_pb2.OPERATION_STATE_CANCELLED))
    assert cancelled.code is grpc.StatusCode.CANCELLED


class FakeImages(pb.images_pb2_grpc.ImageServiceServicer):
    """Two pages of images; GetImage knows none; UpdateImage echoes."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def _auth(self, context: grpc.ServicerContext) -> None:
        auth = dict(context.invocation_metadata()).get("authorization")
        self.seen.append(("authorization", auth))
        if auth != "Bearer imp_fake":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid API token")

    def ListImages(self, request, context):  # noqa: N802 (gRPC's names)
        self._auth(context)
        self.seen.append(("list", (request.page_token, request.name_prefix, request.state)))
        if request.page_token == "":
            return images_pb2.ListImagesResponse(
                images=[images_pb2.Image(id="1", name="web", owner="alice", state=images_pb2.IMAGE_STATE_FAILED,
                                         visibility=images_pb2.VISIBILITY_PRIVATE, created_unix=30)],
                next_page_token="p2",
            )
        return images_pb2.ListImagesResponse(
            images=[
                images_pb2.Image(id="2", name="web", owner="alice", state=images_pb2.IMAGE_STATE_ACTIVE,
                                 visibility=images_pb2.VISIBILITY_PRIVATE, created_unix=10),
                images_pb2.Image(id="3", name="web-old", owner="alice", visibility=images_pb2.VISIBILITY_PRIVATE),
                images_pb2.Image(id="4", name="web", owner="bob", visibility=images_pb2.VISIBILITY_PUBLIC),
            ]
        )

    def GetImage(self, request, context):  # noqa: N802
        self._auth(context)
        context.abort(grpc.StatusCode.NOT_FOUND, f"image {request.id} not found")

    def UpdateImage(self, request, context):  # noqa: N802
        self._auth(context)
        self.seen.append(("update_mask", list(request.update_mask)))
        return images_pb2.Image(id=request.id, name=request.name, tags=request.tags)


class FakeOperations(pb.operations_pb2_grpc.OperationServiceServicer):
    def WatchOperation(self, request, context) -> Iterator[operations_pb2.Operation]:  # noqa: N802
        running = agent_pb2.OPERATION_STATE_RUNNING
        yield operations_pb2.Operation(id=request.id, state=running, phase="reading disks", bytes_done=1)
        yield operations_pb2.Operation(id=request.id, state=running, phase="reading disks", bytes_done=2)
        if request.id == "good":
            yield operations_pb2.Operation(id=request.id, state=agent_pb2.OPERATION_STATE_SUCCEEDED, bytes_done=2)
        else:
            yield operations_pb2.Operation(
                id=request.id,
                state=agent_pb2.OPERATION_STATE_FAILED,
                error="no space left on the store",
                error_code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
            )


@pytest.fixture
def fake() -> Iterator[tuple[Client, FakeImages]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    images = FakeImages()
    pb.images_pb2_grpc.add_ImageServiceServicer_to_server(images, server)
    pb.operations_pb2_grpc.add_OperationServiceServicer_to_server(FakeOperations(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with Client(endpoint=f"http://127.0.0.1:{port}", token="imp_fake", timeout=10) as c:
        yield c, images
    server.stop(None)


def test_token_is_sent_and_pages_are_followed(fake: tuple[Client, FakeImages]) -> None:
    c, images = fake
    assert [i.id for i in c.list_images(name_prefix="web")] == ["1", "2", "3", "4"]
    assert ("authorization", "Bearer imp_fake") in images.seen
    assert [s[1][0] for s in images.seen if s[0] == "list"] == ["", "p2"]


def test_find_image_prefers_own_then_not_failed(fake: tuple[Client, FakeImages]) -> None:
    c, images = fake
    found = c.find_image("web")
    assert found is not None and found.id == "2", found
    # Deprecated ones are looked for too (the default list hides them).
    states = {s[1][2] for s in images.seen if s[0] == "list"}
    assert states == {0, images_pb2.IMAGE_STATE_DEPRECATED}
    assert c.find_image("nothing") is None


def test_errors_carry_the_status(fake: tuple[Client, FakeImages]) -> None:
    c, _ = fake
    with pytest.raises(ImprintError) as e:
        c.get_image("x")
    assert e.value.code is grpc.StatusCode.NOT_FOUND
    assert str(e.value) == "NOT_FOUND: image x not found"
    with Client(endpoint=c.endpoint, token="imp_wrong") as wrong:
        with pytest.raises(ImprintError) as e:
            wrong.list_images()
    assert e.value.code is grpc.StatusCode.UNAUTHENTICATED


def test_update_mask_is_the_given_fields(fake: tuple[Client, FakeImages]) -> None:
    c, images = fake
    img = c.update_image("i1", name="web2", tags="one")
    assert (img.name, list(img.tags)) == ("web2", ["one"])
    assert ("update_mask", ["name", "tags"]) in images.seen
    with pytest.raises(TypeError, match="owner"):
        c.update_image("i1", owner="bob")


def test_wait_reports_progress_and_raises_on_failure(fake: tuple[Client, FakeImages]) -> None:
    c, _ = fake
    seen: list[int] = []
    done = c.wait("good", progress=lambda o: seen.append(o.bytes_done))
    assert done.state == agent_pb2.OPERATION_STATE_SUCCEEDED
    assert seen == [1, 2, 2]
    with pytest.raises(OperationFailed) as e:
        c.wait(operations_pb2.Operation(id="bad"))
    assert e.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert e.value.operation.state == agent_pb2.OPERATION_STATE_FAILED


def test_to_dict_uses_proto_field_names() -> None:
    d = Client.to_dict(images_pb2.Image(id="i", size_bytes=5, state=images_pb2.IMAGE_STATE_ACTIVE))
    assert d == {"id": "i", "size_bytes": "5", "state": "IMAGE_STATE_ACTIVE"}

"""The client against a real imprintd, agent and busybox guests.

tests/tests/python_client_e2e.rs starts them and runs this module with
IMPRINT_ENDPOINT, IMPRINT_TOKEN and the IMPRINT_TEST_* variables below;
without them these tests fail (they never skip). The tests run in file
order on one image: capture, look up, deploy, share, errors, delete.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest

from imprint_client import Client, ImprintError, OperationFailed, pb

agent_pb2, images_pb2, operations_pb2 = pb.agent_pb2, pb.images_pb2, pb.operations_pb2
Code = grpc.StatusCode
RUNNING, SUCCEEDED = agent_pb2.OPERATION_STATE_RUNNING, agent_pb2.OPERATION_STATE_SUCCEEDED
IMAGE_NAME = "py-web"
# What the deployed guest gets; the Rust side finds the address on its console.
NETWORK = {
    "hostname": "py-deployed",
    "interfaces": [
        {
            "addresses": ["192.0.2.41/24"],
            "gateway4": "192.0.2.1",
            "nameservers": ["192.0.2.53"],
        }
    ],
}


@dataclass(frozen=True)
class World:
    host: str
    guest: str  # alice's running busybox guest, captured here
    deaf_guest: str  # alice's guest that ignores ACPI shutdown requests
    deploy_name: str
    pool: str
    account: str
    other_account: str
    other_token: str


def need(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        pytest.fail(f"{var} is not set: run these tests through tests/tests/python_client_e2e.rs")
    return value


@pytest.fixture(scope="module")
def world() -> World:
    need("IMPRINT_ENDPOINT")
    need("IMPRINT_TOKEN")
    return World(
        host=need("IMPRINT_TEST_HOST"),
        guest=need("IMPRINT_TEST_GUEST"),
        deaf_guest=need("IMPRINT_TEST_DEAF_GUEST"),
        deploy_name=need("IMPRINT_TEST_DEPLOY_NAME"),
        pool=need("IMPRINT_TEST_POOL"),
        account=need("IMPRINT_TEST_ACCOUNT"),
        other_account=need("IMPRINT_TEST_OTHER_ACCOUNT"),
        other_token=need("IMPRINT_TEST_OTHER_TOKEN"),
    )


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[Client]:
    with Client.from_env() as c:
        yield c


@pytest.fixture(scope="module")
def other(world: World) -> Iterator[Client]:
    with Client(token=world.other_token) as c:
        yield c


def raises(code: grpc.StatusCode, call: Callable[..., Any], *args: Any, **kwargs: Any) -> ImprintError:
    """The ImprintError ``call`` raises, which must carry ``code``."""
    with pytest.raises(ImprintError) as e:
        call(*args, **kwargs)
    assert e.value.code is code, str(e.value)
    assert str(e.value) == f"{code.name}: {e.value.details}"
    return e.value


@pytest.fixture(scope="module")
def captured(client: Client, world: World) -> tuple[operations_pb2.Operation, list[operations_pb2.Operation]]:
    """The capture's final state and every update wait() reported."""
    op = client.capture(
        world.host,
        world.guest,
        IMAGE_NAME,
        notes="captured from Python",
        tags=["py", "e2e"],
        shutdown_timeout_seconds=90,
    )
    assert (op.kind, op.state) == ("capture", RUNNING), op
    updates: list[operations_pb2.Operation] = []
    return client.wait(op, progress=updates.append, timeout=300), updates


@pytest.fixture(scope="module")
def image(client: Client, captured: tuple[operations_pb2.Operation, Any]) -> images_pb2.Image:
    return client.get_image(captured[0].capture.image_id)


@pytest.fixture(scope="module")
def deployed(client: Client, world: World, image: images_pb2.Image) -> operations_pb2.Operation:
    # busybox has no OS to generalize: keep its identity.
    op = client.deploy(
        image.id,
        world.host,
        world.deploy_name,
        pool=world.pool,
        network=NETWORK,
        keep_identity=True,
        start=True,
    )
    return client.wait(op.id, timeout=300)


def test_capture_reports_progress_until_it_succeeds(
    captured: tuple[operations_pb2.Operation, list[operations_pb2.Operation]],
) -> None:
    done, updates = captured
    assert done.state == SUCCEEDED, done.error
    # The state at once (running), every change, the final state last.
    assert len(updates) >= 2, updates
    assert updates[0].state == RUNNING
    assert all(u.state == RUNNING for u in updates[:-1])
    assert updates[-1] == done
    done_bytes = [u.bytes_done for u in updates]
    assert done_bytes == sorted(done_bytes), done_bytes
    assert done.capture.image_id == done.image_id != ""
    assert done.capture.bytes_stored > 0


def test_the_image_is_found_by_id_name_and_tag(
    client: Client, world: World, image: images_pb2.Image
) -> None:
    assert (image.name, image.state, image.owner) == (IMAGE_NAME, images_pb2.IMAGE_STATE_ACTIVE, world.account)
    assert (image.source_host, image.source_guest) == (world.host, world.guest)
    assert sorted(image.tags) == ["e2e", "py"]
    found = client.find_image(IMAGE_NAME)
    assert found is not None and found.id == image.id
    assert client.find_image(IMAGE_NAME[:-1]) is None, "exact names only"
    assert [i.id for i in client.list_images(tag="py")] == [image.id]
    as_dict = Client.to_dict(image)
    assert (as_dict["id"], as_dict["state"]) == (image.id, "IMAGE_STATE_ACTIVE")


def test_deploy_with_a_static_address(
    client: Client, world: World, deployed: operations_pb2.Operation
) -> None:
    assert deployed.state == SUCCEEDED, deployed.error
    assert deployed.deploy.guest_name == world.deploy_name
    assert deployed.deploy.started
    guests = {g.name: g for g in client.list_guests(world.host)}
    mine = guests[world.deploy_name]
    assert (mine.owner, mine.power_state) == (world.account, agent_pb2.POWER_STATE_RUNNING)


def test_update_share_and_publish_round_trip(
    client: Client, other: Client, world: World, image: images_pb2.Image
) -> None:
    updated = client.update_image(image.id, notes="updated", tags=["py", "e2e", "web"], min_vcpus=1)
    assert (updated.name, updated.notes, updated.min_vcpus) == (IMAGE_NAME, "updated", 1)
    assert sorted(updated.tags) == ["e2e", "py", "web"]

    # Another account does not see a private image at all: NOT_FOUND.
    raises(Code.NOT_FOUND, other.get_image, image.id)
    shared = client.share_image(image.id, [world.other_account])
    assert shared.visibility == images_pb2.VISIBILITY_SHARED
    assert [(m.account, m.status) for m in shared.members] == [(world.other_account, "pending")]
    # Pending: visible by id (to decide), listed once accepted.
    assert other.get_image(image.id).id == image.id
    assert image.id not in [i.id for i in other.list_images()]
    other.accept_share(image.id)
    assert image.id in [i.id for i in other.list_images()]
    raises(Code.PERMISSION_DENIED, other.update_image, image.id, notes="mine now")
    unshared = client.unshare_image(image.id, world.other_account)
    assert unshared.visibility == images_pb2.VISIBILITY_PRIVATE
    raises(Code.NOT_FOUND, other.get_image, image.id)

    published = client.publish_image(image.id)
    assert published.visibility == images_pb2.VISIBILITY_PUBLIC
    seen = other.find_image(IMAGE_NAME)
    assert seen is not None and seen.id == image.id
    assert client.unpublish_image(image.id).visibility == images_pb2.VISIBILITY_PRIVATE
    raises(Code.NOT_FOUND, other.get_image, image.id)
    assert other.find_image(IMAGE_NAME) is None


def test_errors_carry_the_grpc_code(client: Client, world: World, image: images_pb2.Image) -> None:
    missing = str(uuid.uuid4())
    assert missing in raises(Code.NOT_FOUND, client.get_image, missing).details
    raises(Code.NOT_FOUND, client.capture, "no-such-host", world.guest, "py-nowhere")
    off_subnet = {"interfaces": [{"addresses": ["10.0.0.5/24"], "gateway4": "192.168.7.1"}]}
    bad = raises(
        Code.INVALID_ARGUMENT,
        client.deploy,
        image.id,
        world.host,
        "py-bad-gateway",
        network=off_subnet,
        keep_identity=True,
    )
    assert "outside the subnet" in bad.details
    small = raises(
        Code.INVALID_ARGUMENT,
        client.deploy,
        image.id,
        world.host,
        "py-small-disk",
        disk_sizes_bytes=[1 << 20],
        keep_identity=True,
    )
    assert "smaller" in small.details
    with Client(token="imp_not_a_token") as stranger:
        raises(Code.UNAUTHENTICATED, stranger.list_images)
    with Client(endpoint="http://127.0.0.1:1") as nobody:
        raises(Code.UNAVAILABLE, nobody.list_hosts)


def test_wait_on_a_failing_capture_raises_operation_failed(client: Client, world: World) -> None:
    # The guest ignores the ACPI request; force-off is not allowed.
    op = client.capture(world.host, world.deaf_guest, "py-deaf", shutdown_timeout_seconds=1)
    with pytest.raises(OperationFailed) as e:
        client.wait(op, timeout=120)
    assert e.value.code is Code.DEADLINE_EXCEEDED, str(e.value)
    assert "did not power off" in e.value.details
    assert (e.value.operation.id, e.value.operation.state) == (op.id, agent_pb2.OPERATION_STATE_FAILED)
    assert client.get_image(op.image_id).state == images_pb2.IMAGE_STATE_FAILED
    assert client.wait(client.delete_image(op.image_id)).state == SUCCEEDED
    raises(Code.NOT_FOUND, client.get_image, op.image_id)


def test_wait_times_out_and_a_cancelled_operation_raises(client: Client, world: World) -> None:
    op = client.capture(world.host, world.deaf_guest, "py-deaf-cancelled", shutdown_timeout_seconds=600)
    # It waits up to 600 s for a shutdown that never comes.
    with pytest.raises(TimeoutError):
        client.wait(op, timeout=0.5)
    phases: list[str] = []
    cancelled: list[operations_pb2.Operation] = []

    def cancel_once_the_agent_has_it(cur: operations_pb2.Operation) -> None:
        # Past the daemon's own phases, the agent reports its own.
        phases.append(cur.phase)
        if cur.phase not in ("queued", "dispatched") and not cancelled:
            cancelled.append(client.cancel_operation(cur.id))

    with pytest.raises(OperationFailed) as e:
        client.wait(op, progress=cancel_once_the_agent_has_it, timeout=120)
    assert cancelled, phases
    assert e.value.code is Code.CANCELLED, str(e.value)
    assert e.value.operation.state == agent_pb2.OPERATION_STATE_CANCELLED
    guests = {g.name: g for g in client.list_guests(world.host)}
    assert guests[world.deaf_guest].power_state == agent_pb2.POWER_STATE_RUNNING, "left running"
    assert client.wait(client.delete_image(op.image_id)).state == SUCCEEDED


def test_delete_the_deployed_guest(
    client: Client, other: Client, world: World, deployed: operations_pb2.Operation
) -> None:
    # Booted first: the test then reads its network setup in the console log.
    console = Path(need("IMPRINT_TEST_DEPLOY_CONSOLE"))
    deadline = time.monotonic() + 120
    while "IMPRINT-READY" not in (console.read_text(errors="replace") if console.exists() else ""):
        assert time.monotonic() < deadline, f"{world.deploy_name} did not boot within 120 s"
        time.sleep(0.25)
    raises(Code.NOT_FOUND, other.delete_guest, world.host, world.deploy_name)
    raises(Code.INVALID_ARGUMENT, client.delete_guest, world.host, "")
    op = client.delete_guest(world.host, world.deploy_name, request_id="py-delete-guest")
    assert op.kind == "delete-guest"
    done = client.wait(op, timeout=300)
    assert done.state == SUCCEEDED
    assert done.delete_guest.guest_uuid == deployed.deploy.guest_uuid
    assert sorted(done.delete_guest.deleted_volumes) == sorted(deployed.deploy.volumes)
    assert world.deploy_name not in {g.name for g in client.list_guests(world.host)}
    raises(Code.NOT_FOUND, client.delete_guest, world.host, world.deploy_name)


def test_delete_the_image_last(client: Client, image: images_pb2.Image, deployed: operations_pb2.Operation) -> None:
    op = client.delete_image(image.id)
    assert op.kind == "delete"
    assert client.wait(op.id).state == SUCCEEDED
    raises(Code.NOT_FOUND, client.get_image, image.id)
    assert client.find_image(IMAGE_NAME) is None

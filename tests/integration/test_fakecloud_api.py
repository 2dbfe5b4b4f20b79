"""The fake Hetzner Cloud API's shapes and rules, driven through the official hcloud client."""

import threading
import time
from collections.abc import Callable
from typing import Any

import hcloud
import pytest
import requests
from hcloud.floating_ips import FloatingIP
from hcloud.servers import Server
from hcloud.volumes import Volume

from harness.fakecloud.testing import serve_fake, unretried_client

pytestmark = pytest.mark.integration


@pytest.fixture
def env():
    with serve_fake() as served:
        yield served


@pytest.fixture
def client(env):
    return unretried_client(env.token, env.url)


def api_error(call: Callable[[], object]) -> hcloud.APIException:
    with pytest.raises(hcloud.APIException) as caught:
        call()
    return caught.value


def test_wrong_token_unauthorized(env):
    other = hcloud.Client("not-the-token", api_endpoint=env.url, timeout=5)

    error = api_error(other.servers.get_all)

    assert error.code == "unauthorized"
    assert error.correlation_id


def test_server_shape(env, client):
    cluster = env.cluster()

    server = client.servers.get_by_id(cluster.server_ids[1])

    assert server.name == "mailcow-ha-test-2"
    assert server.status == "running"
    assert server.labels == {"cluster": "mailcow-ha-test", "node-index": "2"}
    assert server.private_net[0].ip == "10.0.1.12"
    assert server.private_net[0].network.id == cluster.network_id
    assert server.public_net.ipv4.ip.startswith("198.51.100.")
    assert server.public_net.ipv6.network_mask == "64"
    assert server.location.name == "fsn1"
    assert server.location.network_zone == "eu-central"
    assert server.server_type.name == "cx22"


def test_server_lists_held_resources(env, client):
    cluster = env.cluster()

    holder = client.servers.get_by_id(cluster.server_ids[0])

    assert [volume.id for volume in holder.volumes] == [cluster.volume_id]
    assert [fip.id for fip in holder.public_net.floating_ips] == cluster.floating_ip_ids


def test_label_selector_filters_servers(env, client):
    env.cluster("alpha", nodes=3)
    env.cluster("beta", nodes=2)

    alpha = client.servers.get_all(label_selector="cluster=alpha")
    subset = client.servers.get_all(label_selector="cluster in (alpha,beta),node-index notin (1,2)")

    assert [server.name for server in alpha] == ["alpha-1", "alpha-2", "alpha-3"]
    assert [server.name for server in subset] == ["alpha-3"]


def test_invalid_label_selector_rejected(env, client):
    error = api_error(lambda: client.servers.get_all(label_selector="cluster in (a"))

    assert error.code == "invalid_input"
    assert error.details["fields"][0]["name"] == "label_selector"


def test_server_list_by_name(env, client):
    env.cluster()

    page = client.servers.get_list(name="mailcow-ha-test-3")

    assert [server.name for server in page.servers] == ["mailcow-ha-test-3"]


def test_pagination_meta(env, client):
    for index in range(60):
        env.fake.create_server(f"bulk-{index}", labels={"bulk": "yes"})

    page = client.servers.get_list(label_selector="bulk", page=2, per_page=25)
    everything = client.servers.get_all(label_selector="bulk")

    assert len(page.servers) == 25
    assert page.meta.pagination.previous_page == 1
    assert page.meta.pagination.next_page == 3
    assert page.meta.pagination.last_page == 3
    assert page.meta.pagination.total_entries == 60
    assert len(everything) == 60


def test_not_found_error_body(env):
    response = requests.get(f"{env.url}/volumes/999", headers={"Authorization": f"Bearer {env.token}"}, timeout=5)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "message" in response.json()["error"]
    assert response.json()["error"]["details"] is None


def test_every_response_has_headers(env):
    headers = {"Authorization": f"Bearer {env.token}"}
    ok = requests.get(f"{env.url}/servers", headers=headers, timeout=5)
    missing = requests.get(f"{env.url}/volumes/5", headers=headers, timeout=5)

    for response in (ok, missing):
        assert response.headers["RateLimit-Limit"] == "3600"
        assert int(response.headers["RateLimit-Remaining"]) >= 3500
        assert int(response.headers["RateLimit-Reset"]) >= int(time.time())
        assert len(response.headers["X-Correlation-Id"]) == 16


def test_invalid_json_body(env):
    response = requests.post(
        f"{env.url}/volumes/1/actions/attach",
        data=b"{not json",
        headers={"Authorization": f"Bearer {env.token}", "Content-Type": "application/json"},
        timeout=5,
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "json_error"


def test_attach_when_attached_elsewhere(env, client):
    cluster = env.cluster()

    error = api_error(lambda: client.volumes.attach(Volume(id=cluster.volume_id), Server(id=cluster.server_ids[1])))

    assert error.code == "volume_already_attached"
    assert env.fake.volumes[cluster.volume_id].server == cluster.server_ids[0]


def test_attach_other_location_rejected(env, client):
    cluster = env.cluster(volume_on=None)
    far = env.fake.create_server("far", location="hel1")

    error = api_error(lambda: client.volumes.attach(Volume(id=cluster.volume_id), Server(id=far.id)))

    assert error.code == "invalid_input"
    assert "hel1" in error.details["fields"][0]["messages"][0]
    assert env.fake.volumes[cluster.volume_id].server is None


def test_attach_missing_server_field(env):
    cluster = env.cluster(volume_on=None)

    response = requests.post(
        f"{env.url}/volumes/{cluster.volume_id}/actions/attach",
        json={},
        headers={"Authorization": f"Bearer {env.token}"},
        timeout=5,
    )

    assert response.status_code == 422
    assert response.json()["error"]["details"]["fields"][0]["name"] == "server"


def test_action_runs_then_succeeds(env, client):
    cluster = env.cluster()
    env.fake.set_action_latency("volume.detach", 0.3)

    action = client.volumes.detach(Volume(id=cluster.volume_id))
    during = client.volumes.get_by_id(cluster.volume_id)
    action.wait_until_finished(max_retries=100)
    after = client.volumes.get_by_id(cluster.volume_id)

    assert action.status == "success"
    assert action.command == "detach_volume"
    assert during.server.id == cluster.server_ids[0]
    assert after.server is None


def test_running_action_reports_progress(env, client):
    cluster = env.cluster()
    env.fake.set_action_latency(None, 0.4)

    action = client.floating_ips.assign(FloatingIP(id=cluster.floating_ip_ids[0]), Server(id=cluster.server_ids[1]))
    time.sleep(0.2)
    midway = client.actions.get_by_id(action.id)

    assert action.status == "running"
    assert 0 < midway.progress < 100
    assert midway.finished is None
    assert {"id": cluster.floating_ip_ids[0], "type": "floating_ip"} in midway.resources


def test_running_action_locks_volume(env, client):
    cluster = env.cluster()
    env.fake.set_action_latency("volume.detach", 0.5)
    client.volumes.detach(Volume(id=cluster.volume_id))

    error = api_error(lambda: client.volumes.detach(Volume(id=cluster.volume_id)))

    assert error.code == "locked"


def test_assign_moves_floating_ip(env, client):
    cluster = env.cluster()
    target = cluster.server_ids[2]

    action = client.floating_ips.assign(FloatingIP(id=cluster.floating_ip_ids[0]), Server(id=target))
    moved = client.floating_ips.get_by_id(cluster.floating_ip_ids[0])

    assert action.status == "success"
    assert moved.server.id == target


def test_assign_outside_network_zone_rejected(env, client):
    cluster = env.cluster()
    far = env.fake.create_server("far", location="ash")

    error = api_error(lambda: client.floating_ips.assign(FloatingIP(id=cluster.floating_ip_ids[0]), Server(id=far.id)))

    assert error.code == "invalid_input"


def test_unassign_floating_ip(env, client):
    cluster = env.cluster()

    client.floating_ips.unassign(FloatingIP(id=cluster.floating_ip_ids[0]))

    assert client.floating_ips.get_by_id(cluster.floating_ip_ids[0]).server is None


def test_change_dns_ptr(env, client):
    cluster = env.cluster()
    fip_id = cluster.floating_ip_ids[0]
    address = env.fake.floating_ips[fip_id].ip

    client.floating_ips.change_dns_ptr(FloatingIP(id=fip_id), address, "mail.example.org")
    error = api_error(lambda: client.floating_ips.change_dns_ptr(FloatingIP(id=fip_id), "192.0.2.1", "x.example"))

    assert client.floating_ips.get_by_id(fip_id).dns_ptr == [{"ip": address, "dns_ptr": "mail.example.org"}]
    assert error.code == "invalid_input"


def test_ipv6_floating_ip_dns_ptr(env, client):
    server = env.fake.create_server("v6")
    fip = env.fake.create_floating_ip("v6", type="ipv6", server_id=server.id)
    address = fip.ip.replace("::/64", "::2")

    client.floating_ips.change_dns_ptr(FloatingIP(id=fip.id), address, "mail6.example.org")

    assert env.fake.floating_ips[fip.id].dns_ptr[address] == "mail6.example.org"


def test_volume_resize_rules(env, client):
    cluster = env.cluster()

    client.volumes.resize(Volume(id=cluster.volume_id), 30)
    smaller = api_error(lambda: client.volumes.resize(Volume(id=cluster.volume_id), 25))

    assert client.volumes.get_by_id(cluster.volume_id).size == 30
    assert smaller.code == "invalid_input"


def test_power_off_and_on(env, client):
    cluster = env.cluster()
    server = Server(id=cluster.server_ids[0])

    client.servers.power_off(server)
    off = client.servers.get_by_id(server.id).status
    client.servers.power_on(server)

    assert off == "off"
    assert client.servers.get_by_id(server.id).status == "running"


def test_detach_from_powered_off_server(env, client):
    cluster = env.cluster()
    env.fake.set_server_status(cluster.server_ids[0], "off")

    client.volumes.detach(Volume(id=cluster.volume_id))

    assert client.volumes.get_by_id(cluster.volume_id).server is None


def test_network_get(env, client):
    cluster = env.cluster()

    network = client.networks.get_by_id(cluster.network_id)

    assert network.ip_range == "10.0.0.0/16"
    assert network.subnets[0].ip_range == "10.0.1.0/24"
    assert sorted(server.id for server in network.servers) == cluster.server_ids


def test_actions_list_by_id(env, client):
    cluster = env.cluster()
    action = client.volumes.detach(Volume(id=cluster.volume_id))

    response = requests.get(
        f"{env.url}/actions", params={"id": action.id}, headers={"Authorization": f"Bearer {env.token}"}, timeout=5
    )
    by_volume = client.volumes.get_actions(Volume(id=cluster.volume_id))

    assert [entry["id"] for entry in response.json()["actions"]] == [action.id]
    assert [entry.id for entry in by_volume] == [action.id]


@pytest.mark.parametrize(
    ("fault", "expected_code"),
    [
        ({"code": "locked"}, "locked"),
        ({"status": 409}, "conflict"),
        ({"status": 500}, "server_error"),
        ({"status": 503}, "unavailable"),
        ({"status": 502}, 502),
        ({"status": 504}, 504),
    ],
)
def test_injected_errors(env, client, fault, expected_code):
    cluster = env.cluster()
    env.fake.inject(operation="volume.get", **fault)

    error = api_error(lambda: client.volumes.get_by_id(cluster.volume_id))
    after = client.volumes.get_by_id(cluster.volume_id)

    assert error.code == expected_code
    assert after.id == cluster.volume_id


def test_injected_rate_limit(env):
    env.fake.inject(operation="server.list", rate_limit_reset_in=2.0)
    headers = {"Authorization": f"Bearer {env.token}"}

    first = requests.get(f"{env.url}/servers", headers=headers, timeout=5)
    other = requests.get(f"{env.url}/volumes", headers=headers, timeout=5)

    assert first.status_code == 429
    assert first.json()["error"]["code"] == "rate_limit_exceeded"
    assert first.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(first.headers["RateLimit-Reset"]) - time.time() <= 3
    assert other.status_code == 429


def test_budget_exhausted(env):
    env.fake.rate_limit.configure(3600, remaining=2)
    headers = {"Authorization": f"Bearer {env.token}"}

    statuses = [requests.get(f"{env.url}/servers", headers=headers, timeout=5).status_code for _ in range(3)]

    assert statuses == [200, 200, 429]


def test_action_fault_error(env, client):
    cluster = env.cluster()
    env.fake.inject(operation="floating_ip.assign", action="error", action_error_code="server_error")

    action = client.floating_ips.assign(FloatingIP(id=cluster.floating_ip_ids[0]), Server(id=cluster.server_ids[1]))
    finished = client.actions.get_by_id(action.id)

    assert finished.status == "error"
    assert finished.error["code"] == "server_error"
    assert env.fake.floating_ips[cluster.floating_ip_ids[0]].server == cluster.server_ids[0]


def test_action_fault_never_ends(env, client):
    cluster = env.cluster()
    env.fake.inject(operation="volume.detach", action="never")

    action = client.volumes.detach(Volume(id=cluster.volume_id))
    time.sleep(0.1)
    still = client.actions.get_by_id(action.id)
    locked = api_error(lambda: client.volumes.detach(Volume(id=cluster.volume_id)))
    env.fake.finish_action(action.id)

    assert still.status == "running"
    assert locked.code == "locked"
    assert client.actions.get_by_id(action.id).status == "success"
    assert env.fake.volumes[cluster.volume_id].server is None


def test_hang_hits_client_timeout(env):
    cluster = env.cluster()
    env.fake.inject(operation="volume.get", hang=3.0)
    slow = unretried_client(env.token, env.url, timeout=0.3)

    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        slow.volumes.get_by_id(cluster.volume_id)

    assert time.monotonic() - started < 2.0


def test_hang_after_applies_change(env, client):
    cluster = env.cluster()
    env.fake.inject(operation="volume.detach", hang=3.0, hang_after=True)
    slow = unretried_client(env.token, env.url, timeout=0.3)

    with pytest.raises(requests.exceptions.ReadTimeout):
        slow.volumes.detach(Volume(id=cluster.volume_id))

    assert client.volumes.get_by_id(cluster.volume_id).server is None


def test_fault_then_callback(env, client):
    cluster = env.cluster(volume_on=None)
    fired = threading.Event()
    env.fake.inject(operation="volume.get", code="conflict", then=fired.set)

    api_error(lambda: client.volumes.get_by_id(cluster.volume_id))

    assert fired.wait(2)


def test_request_accounting_since_mark(env, client):
    cluster = env.cluster()
    client.servers.get_all()
    mark = env.fake.requests.mark()

    client.volumes.get_by_id(cluster.volume_id)
    client.volumes.get_by_id(cluster.volume_id)
    client.volumes.detach(Volume(id=cluster.volume_id))

    assert env.fake.requests.counts(mark) == {"GET /volumes/{id}": 2, "POST /volumes/{id}/actions/detach": 1}


def test_events_and_callbacks(env, client):
    cluster = env.cluster()
    seen: list[dict[str, Any]] = []
    env.fake.subscribe(seen.append)
    target = cluster.server_ids[1]

    client.volumes.detach(Volume(id=cluster.volume_id))
    client.volumes.attach(Volume(id=cluster.volume_id), Server(id=target))
    client.floating_ips.assign(FloatingIP(id=cluster.floating_ip_ids[0]), Server(id=target))

    kinds = [event["kind"] for event in seen if not event["kind"].startswith("action.")]
    assert kinds == ["volume.detached", "volume.attached", "floating_ip.assigned"]
    assert seen[-2]["server"] == target
    assert seen[-2]["previous_server"] == cluster.server_ids[0]


def test_callbacks_run_before_action_finishes(env, client):
    cluster = env.cluster()
    env.fake.set_action_latency("volume.detach", 0.1)
    statuses: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["kind"] == "volume.detached":
            statuses.append(client.actions.get_by_id(action.id).status)

    env.fake.subscribe(on_event)
    action = client.volumes.detach(Volume(id=cluster.volume_id))
    action.wait_until_finished(max_retries=100)

    assert statuses == ["running"]
    assert action.status == "success"

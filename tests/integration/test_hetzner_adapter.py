"""The Hetzner Cloud adapter against the fake API: moves, retries, deadlines and secrets."""

import logging
import threading
import time
from typing import Any

import pytest

from harness.fakecloud.testing import FakeCloudEnv, FakeCluster, serve_fake
from harness.nodeconfig import node_config_dict
from mailcow_ha.adapters.hetzner import HetznerCloud
from mailcow_ha.config import parse_config
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import CloudError, DeadlineExceeded, Superseded

pytestmark = pytest.mark.integration

FAST = {"poll_interval": 0.05, "retry_backoff_initial": 0.05, "retry_backoff_max": 0.4, "request_timeout": 2.0}


@pytest.fixture
def env():
    with serve_fake(action_latency=0.05) as served:
        yield served


@pytest.fixture
def cluster(env):
    return env.cluster()


def adapter(env: FakeCloudEnv, cluster: FakeCluster, node_index: int = 2, **overrides: Any) -> HetznerCloud:
    section = env.hetzner_section(cluster, node_index, **{**FAST, **overrides})
    return HetznerCloud(parse_config(node_config_dict(hetzner=section)).hetzner)


def no_supersede() -> None:
    return None


def mutations(env: FakeCloudEnv, mark: int) -> dict[str, int]:
    return {key: count for key, count in env.fake.requests.counts(mark).items() if key.startswith("POST")}


def test_move_volume_from_other_server(env, cluster):
    target = cluster.server_ids[1]
    mark = env.fake.requests.mark()

    adapter(env, cluster).move_volume_here(cluster.volume_id, target, Deadline.after("move", 10), no_supersede)

    assert env.fake.volumes[cluster.volume_id].server == target
    assert mutations(env, mark) == {"POST /volumes/{id}/actions/detach": 1, "POST /volumes/{id}/actions/attach": 1}


def test_move_volume_already_here_noop(env, cluster):
    mark = env.fake.requests.mark()

    adapter(env, cluster, 1).move_volume_here(
        cluster.volume_id, cluster.server_ids[0], Deadline.after("move", 5), no_supersede
    )

    assert env.fake.requests.counts(mark) == {"GET /volumes/{id}": 1}


def test_assign_already_here_noop(env, cluster):
    mark = env.fake.requests.mark()

    adapter(env, cluster, 1).assign_floating_ips(cluster.server_ids[0], Deadline.after("assign", 5), no_supersede)

    assert env.fake.requests.counts(mark) == {"GET /floating_ips/{id}": 1}


def test_assign_two_floating_ips(env):
    cluster = env.cluster(floating_ips=2)
    target = cluster.server_ids[2]

    adapter(env, cluster, 3).assign_floating_ips(target, Deadline.after("assign", 10), no_supersede)

    assert [env.fake.floating_ips[fip_id].server for fip_id in cluster.floating_ip_ids] == [target, target]


def test_locked_twice_then_already_attached(env):
    # The volume's holder is powered off. Attach fails with locked twice, then with "already
    # attached" because the old holder got the volume meanwhile. Locked is retried, and already
    # attached leads to detach, wait, re-read until unattached, then attach.
    cluster = env.cluster(volume_on=None)
    holder, target = cluster.server_ids[0], cluster.server_ids[1]
    env.fake.set_server_status(holder, "off")
    env.fake.inject(operation="volume.attach", code="locked", count=2)
    # The third read still shows the volume unattached, but the holder has it by the third attach.
    env.fake.inject(
        operation="volume.get", skip=2, count=1, then=lambda: env.fake.set_volume_server(cluster.volume_id, holder)
    )
    mark = env.fake.requests.mark()

    adapter(env, cluster).move_volume_here(cluster.volume_id, target, Deadline.after("move", 10), no_supersede)

    records = env.fake.requests.records(mark)
    attach_statuses = [r.status for r in records if r.route == "/volumes/{id}/actions/attach"]
    assert attach_statuses == [423, 423, 409, 201]
    assert [r.status for r in records if r.route == "/volumes/{id}/actions/detach"] == [201]
    # Nothing is reported done before the API shows the volume on the target.
    assert (records[-1].method, records[-1].route) == ("GET", "/volumes/{id}")
    assert env.fake.volumes[cluster.volume_id].server == target


def test_detach_locked_by_power_off(env, cluster):
    holder, target = cluster.server_ids[0], cluster.server_ids[1]
    env.fake.set_action_latency("server.poweroff", 0.6)
    env.fake.set_action_latency("volume.detach", 0.05)
    from hcloud import Client
    from hcloud.servers import Server

    Client(env.token, api_endpoint=env.url, timeout=5).servers.power_off(Server(id=holder))
    mark = env.fake.requests.mark()

    adapter(env, cluster).move_volume_here(cluster.volume_id, target, Deadline.after("move", 10), no_supersede)

    detach_statuses = [r.status for r in env.fake.requests.records(mark) if r.route.endswith("/detach")]
    assert detach_statuses[0] == 423
    assert detach_statuses[-1] == 201
    assert env.fake.volumes[cluster.volume_id].server == target


def test_assign_action_ends_in_error(env, cluster):
    env.fake.inject(
        operation="floating_ip.assign", action="error", action_error_code="server_error", action_error_message="boom"
    )

    with pytest.raises(CloudError) as caught:
        adapter(env, cluster).assign_floating_ips(cluster.server_ids[1], Deadline.after("assign", 10), no_supersede)

    assert caught.value.code == "server_error"
    assert "ended in error server_error (boom)" in str(caught.value)
    assert env.fake.floating_ips[cluster.floating_ip_ids[0]].server == cluster.server_ids[0]


def test_assign_action_never_ends(env, cluster):
    env.fake.inject(operation="floating_ip.assign", action="never")
    started = time.monotonic()

    with pytest.raises(DeadlineExceeded) as caught:
        adapter(env, cluster).assign_floating_ips(cluster.server_ids[1], Deadline.after("assign", 1.0), no_supersede)

    elapsed = time.monotonic() - started
    assert "waiting for action 9" in str(caught.value)
    assert "assign floating IP" in str(caught.value)
    assert 0.9 <= elapsed < 1.5


def test_detach_error_stops_move(env, cluster):
    env.fake.inject(operation="volume.detach", action="error", action_error_code="volume_busy")
    mark = env.fake.requests.mark()

    with pytest.raises(CloudError) as caught:
        adapter(env, cluster).move_volume_here(
            cluster.volume_id, cluster.server_ids[1], Deadline.after("move", 10), no_supersede
        )

    assert caught.value.code == "volume_busy"
    assert "POST /volumes/{id}/actions/attach" not in env.fake.requests.counts(mark)


def test_rate_limit_waited_out(env, cluster):
    env.fake.inject(operation="floating_ip.get", rate_limit_reset_in=1.5)
    started = time.monotonic()

    adapter(env, cluster).assign_floating_ips(cluster.server_ids[1], Deadline.after("assign", 10), no_supersede)

    elapsed = time.monotonic() - started
    assert env.fake.floating_ips[cluster.floating_ip_ids[0]].server == cluster.server_ids[1]
    assert 1.0 <= elapsed < 3.5


def test_rate_limit_past_deadline_fails_fast(env, cluster):
    # At 3600 requests an hour the next request may pass after 1 s; a deadline 0.8 s away is too close.
    env.fake.inject(operation="floating_ip.get", rate_limit_reset_in=5.0)
    started = time.monotonic()

    with pytest.raises(CloudError) as caught:
        adapter(env, cluster).assign_floating_ips(cluster.server_ids[1], Deadline.after("assign", 0.8), no_supersede)

    assert caught.value.code == "rate_limit_exceeded"
    assert "past the step's deadline" in str(caught.value)
    assert time.monotonic() - started < 0.3


def test_exhausted_budget_paced_by_refill(env, cluster):
    # The budget refills evenly: at 36000 an hour one request passes every 0.1 s, although
    # RateLimit-Reset (the budget full again) is an hour away.
    env.fake.rate_limit.configure(36000, remaining=0)
    started = time.monotonic()

    adapter(env, cluster).move_volume_here(
        cluster.volume_id, cluster.server_ids[1], Deadline.after("move", 10), no_supersede
    )

    assert env.fake.volumes[cluster.volume_id].server == cluster.server_ids[1]
    assert time.monotonic() - started < 5


def test_rate_limited_mutation_retried(env, cluster):
    env.fake.inject(operation="volume.detach", rate_limit_reset_in=1.0)

    adapter(env, cluster).move_volume_here(
        cluster.volume_id, cluster.server_ids[1], Deadline.after("move", 10), no_supersede
    )

    assert env.fake.volumes[cluster.volume_id].server == cluster.server_ids[1]


@pytest.mark.parametrize("fault", [{"status": 500}, {"status": 502}, {"status": 504}, {"code": "conflict"}])
def test_transient_read_retried_once(env, cluster, fault):
    env.fake.inject(operation="volume.get", count=1, **fault)
    mark = env.fake.requests.mark()

    info = adapter(env, cluster).volume(cluster.volume_id, Deadline.after("read", 5))

    assert info.server_id == cluster.server_ids[0]
    # Exactly two requests: hcloud's own retries are off, the adapter retried once.
    assert env.fake.requests.counts(mark) == {"GET /volumes/{id}": 2}


def test_permanent_error_not_retried(env, cluster):
    far = env.fake.create_server("far", location="nbg1")
    env.fake.set_volume_server(cluster.volume_id, None)
    mark = env.fake.requests.mark()

    with pytest.raises(CloudError) as caught:
        adapter(env, cluster).move_volume_here(cluster.volume_id, far.id, Deadline.after("move", 10), no_supersede)

    assert caught.value.code == "invalid_input"
    assert caught.value.correlation_id
    assert "not retryable" in str(caught.value)
    assert env.fake.requests.counts(mark)["POST /volumes/{id}/actions/attach"] == 1


def test_hung_request_retried_after_timeout(env, cluster):
    env.fake.inject(operation="volume.get", hang=5.0, count=1)
    started = time.monotonic()

    info = adapter(env, cluster, request_timeout=0.3).volume(cluster.volume_id, Deadline.after("read", 5))

    assert info.id == cluster.volume_id
    assert time.monotonic() - started < 1.5


def test_hung_connection_hits_deadline(env, cluster):
    env.fake.inject(operation="volume.get", hang=10.0, count=None)
    started = time.monotonic()

    with pytest.raises(DeadlineExceeded) as caught:
        adapter(env, cluster, request_timeout=5.0).move_volume_here(
            cluster.volume_id, cluster.server_ids[1], Deadline.after("move volume", 1.0), no_supersede
        )

    assert "move volume timed out" in str(caught.value)
    assert "request_timeout" in str(caught.value)
    assert time.monotonic() - started < 1.6


def test_no_mutation_after_deadline(env, cluster):
    env.fake.set_action_latency("volume.detach", 1.5)
    mark = env.fake.requests.mark()

    with pytest.raises(DeadlineExceeded):
        adapter(env, cluster).move_volume_here(
            cluster.volume_id, cluster.server_ids[1], Deadline.after("move", 0.8), no_supersede
        )
    time.sleep(1.0)

    assert "POST /volumes/{id}/actions/attach" not in env.fake.requests.counts(mark)


def test_checkpoint_stops_before_mutation(env, cluster):
    def superseded():
        raise Superseded("BACKUP arrived")

    mark = env.fake.requests.mark()

    with pytest.raises(Superseded):
        adapter(env, cluster).move_volume_here(
            cluster.volume_id, cluster.server_ids[1], Deadline.after("move", 5), superseded
        )

    assert mutations(env, mark) == {}


def test_checkpoint_before_every_mutation(env, cluster):
    calls = []

    def checkpoint():
        calls.append(sum(mutations(env, mark).values()))

    mark = env.fake.requests.mark()
    adapter(env, cluster).move_volume_here(
        cluster.volume_id, cluster.server_ids[1], Deadline.after("move", 5), checkpoint
    )

    # One call before the detach and one before the attach, each seeing the mutations sent so far;
    # the calls between polls of the running actions come after them.
    assert calls[0] == 0
    assert 1 in calls
    assert sum(mutations(env, mark).values()) == 2


def test_checkpoint_between_action_polls(env, cluster):
    # An action that never ends: the checkpoint runs between polls, so a newer state stops the
    # wait long before the step's deadline.
    env.fake.inject(operation="volume.attach", action="never")
    env.fake.set_volume_server(cluster.volume_id, None)
    polls = []

    def checkpoint():
        polls.append(time.monotonic())
        if len(polls) > 3:
            raise Superseded("BACKUP arrived")

    # Without the checkpoint between polls, the wait would end in DeadlineExceeded after 30 s.
    with pytest.raises(Superseded):
        adapter(env, cluster).move_volume_here(
            cluster.volume_id, cluster.server_ids[1], Deadline.after("move", 30), checkpoint
        )

    assert len(polls) == 4


def test_before_detach_runs_once_before_detach(env, cluster):
    seen = []

    def before_detach(holder, deadline):
        seen.append((holder, sum(mutations(env, mark).values()), deadline.remaining() > 0))

    mark = env.fake.requests.mark()
    adapter(env, cluster).move_volume_here(
        cluster.volume_id, cluster.server_ids[1], Deadline.after("move", 5), no_supersede, before_detach
    )

    assert seen == [(cluster.server_ids[0], 0, True)]
    assert env.fake.volumes[cluster.volume_id].server == cluster.server_ids[1]


def test_before_detach_not_run_without_holder(env, cluster):
    env.fake.set_volume_server(cluster.volume_id, None)
    seen = []

    adapter(env, cluster).move_volume_here(
        cluster.volume_id,
        cluster.server_ids[1],
        Deadline.after("move", 5),
        no_supersede,
        lambda holder, deadline: seen.append(holder),
    )

    assert seen == []


def test_before_detach_can_stop_move(env, cluster):
    def superseded(holder, deadline):
        raise Superseded("BACKUP arrived while waiting for the holder")

    mark = env.fake.requests.mark()
    with pytest.raises(Superseded):
        adapter(env, cluster).move_volume_here(
            cluster.volume_id, cluster.server_ids[1], Deadline.after("move", 5), no_supersede, superseded
        )

    assert mutations(env, mark) == {}


def test_parallel_assign_and_move(env, cluster):
    env.fake.set_action_latency(None, 0.5)
    cloud = adapter(env, cluster)
    target = cluster.server_ids[1]
    errors = []

    def run(step):
        try:
            step()
        except Exception as error:  # the assertion below reports it
            errors.append(error)

    threads = [
        threading.Thread(
            target=run,
            args=(lambda: cloud.assign_floating_ips(target, Deadline.after("assign", 10), no_supersede),),
        ),
        threading.Thread(
            target=run,
            args=(lambda: cloud.move_volume_here(cluster.volume_id, target, Deadline.after("move", 10), no_supersede),),
        ),
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    elapsed = time.monotonic() - started

    assert errors == []
    assert env.fake.volumes[cluster.volume_id].server == target
    assert env.fake.floating_ips[cluster.floating_ip_ids[0]].server == target
    # The move (detach + attach, 0.5 s each) is the slower branch; run in series it would be 1.5 s.
    assert elapsed < 1.45


def test_concurrent_reads_thread_safe(env, cluster):
    cloud = adapter(env, cluster)
    results = []

    def read_many():
        for _ in range(20):
            results.append(cloud.holders(Deadline.after("holders", 5)))

    threads = [threading.Thread(target=read_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)

    assert len(results) == 80
    assert all(result.volumes == {cluster.volume_id: cluster.server_ids[0]} for result in results)


def test_holders(env, cluster):
    holders = adapter(env, cluster).holders(Deadline.after("holders", 5))

    assert holders.floating_ips == {cluster.floating_ip_ids[0]: cluster.server_ids[0]}
    assert holders.volumes == {cluster.volume_id: cluster.server_ids[0]}


def test_cluster_servers(env, cluster):
    env.cluster("other", nodes=2)

    servers = adapter(env, cluster).cluster_servers("mailcow-ha-test", Deadline.after("list", 5))

    assert [server.name for server in servers] == ["mailcow-ha-test-1", "mailcow-ha-test-2", "mailcow-ha-test-3"]
    assert [server.private_ip for server in servers] == cluster.private_ips
    assert servers[0].id == cluster.server_ids[0]
    assert servers[0].status == "running"
    assert servers[0].labels["cluster"] == "mailcow-ha-test"
    assert servers[0].public_ipv4


def test_server_id_by_name(env, cluster):
    cloud = adapter(env, cluster)

    found = cloud.server_id_by_name("mailcow-ha-test-3", Deadline.after("find", 5))
    with pytest.raises(CloudError) as missing:
        cloud.server_id_by_name("nope", Deadline.after("find", 5))

    assert found == cluster.server_ids[2]
    assert missing.value.code == "not_found"
    assert "node.name" in str(missing.value)


def test_volume_info(env, cluster):
    info = adapter(env, cluster).volume(cluster.volume_id, Deadline.after("read", 5))

    assert info.size_gb == 20
    assert info.location == "fsn1"
    assert info.linux_device == f"/dev/disk/by-id/scsi-0HC_Volume_{cluster.volume_id}"
    assert info.name == "mailcow-ha-test-data"


def test_token_never_leaks(env, cluster, caplog):
    caplog.set_level(logging.DEBUG)
    section = env.hetzner_section(cluster, 2, **FAST)
    section["token"] = "wrong-token-must-not-leak"
    cloud = HetznerCloud(parse_config(node_config_dict(hetzner=section)).hetzner)

    with pytest.raises(CloudError) as caught:
        cloud.holders(Deadline.after("holders", 5))

    assert caught.value.code == "unauthorized"
    for text in (str(caught.value), repr(cloud), caplog.text):
        assert "wrong-token-must-not-leak" not in text
        assert env.token not in text


def test_correlation_id_logged(env, cluster, caplog):
    caplog.set_level(logging.WARNING, logger="mailcow_ha.adapters.hetzner")
    env.fake.inject(operation="volume.get", code="conflict", count=1)

    adapter(env, cluster).volume(cluster.volume_id, Deadline.after("read", 5))

    assert "correlation id " in caplog.text
    assert "conflict is transient" in caplog.text

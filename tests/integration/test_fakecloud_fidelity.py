"""The fake's error statuses and bodies against the Hetzner Cloud API reference's error code table.

hcloud reads the error code from the JSON body, so these tests check the HTTP status with
`requests` and the code through the official client.
"""

import time

import hcloud
import pytest
import requests
from hcloud.servers import Server
from hcloud.volumes import Volume

from harness.fakecloud.testing import serve_fake, unretried_client
from harness.nodeconfig import node_config_dict
from mailcow_ha.adapters.hetzner import HetznerCloud
from mailcow_ha.config import parse_config
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import CloudError

pytestmark = pytest.mark.integration

DOCUMENTED_STATUS = {
    "json_error": 400,
    "unauthorized": 401,
    "token_readonly": 401,
    "forbidden": 403,
    "maintenance": 403,
    "resource_limit_exceeded": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "uniqueness_error": 409,
    "conflict": 409,
    "deprecated_api_endpoint": 410,
    "resource_unavailable": 412,
    "invalid_input": 422,
    "service_error": 422,
    "unsupported_error": 422,
    "locked": 423,
    "protected": 423,
    "rate_limit_exceeded": 429,
    "server_error": 500,
    "unavailable": 503,
    "timeout": 504,
}
"""Status of each code in the error code table of the API reference (docs.hetzner.cloud, "Errors")."""

RETRIED_CODES = ["conflict", "locked", "maintenance", "server_error", "service_error", "timeout", "unavailable"]
PERMANENT_CODES = [
    "deprecated_api_endpoint",
    "forbidden",
    "method_not_allowed",
    "protected",
    "resource_unavailable",
    "token_readonly",
    "unsupported_error",
]
FAST = {"poll_interval": 0.05, "retry_backoff_initial": 0.05, "retry_backoff_max": 0.2, "request_timeout": 2.0}


@pytest.fixture(scope="module")
def env():
    with serve_fake() as served:
        yield served


@pytest.fixture
def client(env):
    return unretried_client(env.token, env.url)


@pytest.fixture(autouse=True)
def no_faults(env):
    env.fake.faults.clear()
    yield
    env.fake.faults.clear()


def _get(env, path: str, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token or env.token}"}
    return requests.get(f"{env.url}{path}", headers=headers, timeout=5)


def _post(env, path: str, body: object) -> requests.Response:
    headers = {"Authorization": f"Bearer {env.token}"}
    return requests.post(f"{env.url}{path}", json=body, headers=headers, timeout=5)


@pytest.mark.parametrize(("code", "status"), sorted(DOCUMENTED_STATUS.items()))
def test_injected_code_has_documented_status(env, code, status):
    cluster = env.cluster(name=f"c-{code.replace('_', '-')}")
    env.fake.inject(operation="volume.get", code=code)

    response = _get(env, f"/volumes/{cluster.volume_id}")

    assert response.status_code == status
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(("status", "code"), [(400, "json_error"), (405, "method_not_allowed"), (422, "invalid_input")])
def test_injected_status_has_documented_code(env, client, status, code):
    cluster = env.cluster(name=f"s-{status}")
    env.fake.inject(operation="volume.get", status=status)

    with pytest.raises(hcloud.APIException) as caught:
        client.volumes.get_by_id(cluster.volume_id)

    assert caught.value.code == code


def test_rule_violation_is_422(env, client):
    cluster = env.cluster(name="rule", volume_on=None)
    far = env.fake.create_server("rule-far", location="hel1")

    response = _post(env, f"/volumes/{cluster.volume_id}/actions/attach", {"server": far.id})
    with pytest.raises(hcloud.APIException) as caught:
        client.volumes.attach(Volume(id=cluster.volume_id), Server(id=far.id))

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_input"
    assert caught.value.code == "invalid_input"
    assert env.fake.volumes[cluster.volume_id].server is None


def test_detach_unattached_is_422(env):
    cluster = env.cluster(name="free", volume_on=None)

    response = _post(env, f"/volumes/{cluster.volume_id}/actions/detach", {})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_input"


def test_invalid_label_selector_is_422(env):
    response = _get(env, "/servers?label_selector=cluster%20in%20(a")

    assert response.status_code == 422
    assert response.json()["error"]["details"]["fields"][0]["name"] == "label_selector"


def test_missing_field_is_422(env):
    cluster = env.cluster(name="nofield", volume_on=None)

    response = _post(env, f"/volumes/{cluster.volume_id}/actions/attach", {})

    assert response.status_code == 422
    assert response.json()["error"]["details"]["fields"][0]["name"] == "server"


def test_body_not_object_is_422(env):
    cluster = env.cluster(name="notobject", volume_on=None)

    response = _post(env, f"/volumes/{cluster.volume_id}/actions/attach", [1, 2])

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_input"


def test_wrong_method_is_405(env):
    response = _post(env, "/servers/1", {})

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_error_without_details_sends_null(env):
    response = _get(env, "/volumes/999999")

    assert response.status_code == 404
    assert response.json()["error"]["details"] is None


def test_unauthorized_carries_rate_limit(env):
    response = _get(env, "/servers", token="not-the-token")

    assert response.status_code == 401
    assert response.headers["RateLimit-Limit"] == "3600"
    assert int(response.headers["RateLimit-Reset"]) >= int(time.time())
    assert response.headers["X-Correlation-Id"]


def test_unauthorized_takes_budget(env):
    env.fake.rate_limit.configure(3600, remaining=1)
    try:
        first = _get(env, "/servers", token="not-the-token")
        second = _get(env, "/servers", token="not-the-token")
    finally:
        env.fake.rate_limit.configure(3600)

    assert first.status_code == 401
    assert second.status_code == 429
    assert second.headers["RateLimit-Remaining"] == "0"


def test_server_status_unknown_shown(env, client):
    server = env.fake.create_server("unknown-status", status="unknown")

    fetched = client.servers.get_by_id(server.id)

    assert fetched.status == Server.STATUS_UNKNOWN


def _adapter(env, cluster) -> HetznerCloud:
    section = env.hetzner_section(cluster, 2, **FAST)
    return HetznerCloud(parse_config(node_config_dict(hetzner=section)).hetzner)


@pytest.mark.parametrize("code", RETRIED_CODES)
def test_adapter_retries_documented_code(env, code):
    cluster = env.cluster(name=f"retry-{code.replace('_', '-')}")
    env.fake.inject(operation="volume.get", code=code)
    mark = env.fake.requests.mark()

    info = _adapter(env, cluster).volume(cluster.volume_id, Deadline.after("read", 5))

    assert info.server_id == cluster.server_ids[0]
    assert env.fake.requests.counts(mark) == {"GET /volumes/{id}": 2}


@pytest.mark.parametrize("code", PERMANENT_CODES)
def test_adapter_stops_on_documented_code(env, code):
    cluster = env.cluster(name=f"stop-{code.replace('_', '-')}")
    env.fake.inject(operation="volume.get", code=code)
    mark = env.fake.requests.mark()

    with pytest.raises(CloudError) as caught:
        _adapter(env, cluster).volume(cluster.volume_id, Deadline.after("read", 5))

    assert caught.value.code == code
    assert env.fake.requests.counts(mark) == {"GET /volumes/{id}": 1}

"""`KubeClient` against a scripted local apiserver (tests/unit/kube/fakeapi.py).

Covers: kubeconfig auth; `Retry-After` on 429 and 503 (waited, capped, retried a bounded
number of times) while other errors are raised at once; credentials refreshed on a 401 for an
exec plugin (kubeconfig) and for a rotated in-cluster service-account token over verified TLS;
the verbs' bodies and content types; a watch stream; a refused connection as `ApiError`.
No sleeping: the client's `sleep` is recorded instead. The real apiserver is the e2e suite.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sod_operator.kube import KUBEVIRT, SOD, ApiError, AsyncKube, InCluster, KubeClient, RetryPolicy

from tests.unit.kube.fakeapi import Answer, FakeApiserver, Request, tls_files

NODE = "/api/v1/nodes/n1"

EXEC_PLUGIN = """
import json, sys
token = open(sys.argv[1]).read().strip()
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": token}}))
"""


@pytest.fixture
def api() -> Iterator[FakeApiserver]:
    server = FakeApiserver()
    yield server
    server.close()


def kubeconfig(path: Path, server: str, user: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    return path


def client(api: FakeApiserver, tmp_path: Path, sleeps: list[float] | None = None) -> KubeClient:
    config = kubeconfig(tmp_path / "kubeconfig", api.url, {"token": "t1"})
    record = sleeps.append if sleeps is not None else lambda s: None
    return KubeClient(config, user_agent="unit", retry=RetryPolicy(max_retries=3, max_wait=10.0),
                      sleep=record)  # fmt: skip


def scripted(*answers: Answer) -> object:
    queue = list(answers)
    return lambda r: queue.pop(0) if len(queue) > 1 else queue[0]


def test_a_request_carries_the_kubeconfig_token_and_returns_the_json(
    api: FakeApiserver, tmp_path: Path
) -> None:
    api.answer = lambda r: Answer(body={"metadata": {"name": "n1"}})
    assert client(api, tmp_path).get(NODE) == {"metadata": {"name": "n1"}}
    sent = api.requests[0]
    assert (sent.method, sent.path) == ("GET", NODE)
    assert sent.headers["Authorization"] == "Bearer t1"
    assert sent.headers["User-Agent"] == "unit"


def test_429_is_retried_after_the_servers_retry_after(api: FakeApiserver, tmp_path: Path) -> None:
    throttled = Answer(429, {"reason": "TooManyRequests"}, {"Retry-After": "2"})
    api.answer = scripted(throttled, throttled, Answer(body={"ok": True}))  # type: ignore[assignment]
    sleeps: list[float] = []
    assert client(api, tmp_path, sleeps).create("/api/v1/namespaces", {"x": 1}) == {"ok": True}
    assert sleeps == [2.0, 2.0]
    assert [r.method for r in api.requests] == ["POST"] * 3  # not carried out: safe to resend


def test_retries_are_bounded_and_each_wait_is_capped(api: FakeApiserver, tmp_path: Path) -> None:
    api.answer = lambda r: Answer(429, {"reason": "TooManyRequests"}, {"Retry-After": "600"})
    sleeps: list[float] = []
    with pytest.raises(ApiError) as err:
        client(api, tmp_path, sleeps).get(NODE)
    assert err.value.too_many_requests
    assert sleeps == [10.0, 10.0, 10.0]
    assert len(api.requests) == 4


def test_503_with_retry_after_is_retried_and_without_it_raised(
    api: FakeApiserver, tmp_path: Path
) -> None:
    unavailable = Answer(503, {"reason": "ServiceUnavailable"}, {"Retry-After": "1"})
    api.answer = scripted(unavailable, Answer(body={}))  # type: ignore[assignment]
    sleeps: list[float] = []
    kube = client(api, tmp_path, sleeps)
    kube.get(NODE)
    assert sleeps == [1.0]
    api.answer = lambda r: Answer(503, {"reason": "ServiceUnavailable", "message": "down"})
    with pytest.raises(ApiError) as err:
        kube.get(NODE)
    assert err.value.retryable
    assert err.value.message == "down"
    assert sleeps == [1.0]


def test_other_errors_are_raised_at_once_with_the_status(
    api: FakeApiserver, tmp_path: Path
) -> None:
    api.answer = lambda r: Answer(409, {"reason": "Conflict", "message": "changed"})
    sleeps: list[float] = []
    with pytest.raises(ApiError) as err:
        client(api, tmp_path, sleeps).replace(NODE, {"metadata": {"resourceVersion": "1"}})
    assert err.value.conflict
    assert (err.value.method, err.value.path) == ("PUT", NODE)
    assert sleeps == []
    assert len(api.requests) == 1


def test_an_exec_plugins_token_is_refreshed_when_the_apiserver_answers_401(
    api: FakeApiserver, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("t1")
    (tmp_path / "plugin.py").write_text(EXEC_PLUGIN)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                     "args": [str(tmp_path / "plugin.py"), str(token)],
                     "interactiveMode": "Never"}}  # fmt: skip
    valid = {"Bearer t1"}
    api.answer = lambda r: Answer() if r.headers.get("Authorization") in valid else Answer(401)
    kube = KubeClient(kubeconfig(tmp_path / "kubeconfig", api.url, user))
    kube.get(NODE)
    token.write_text("t2")  # the identity provider rotated it; the old one is refused now
    valid.clear()
    valid.add("Bearer t2")
    kube.get(NODE)
    assert [r.headers.get("Authorization") for r in api.requests] == [
        "Bearer t1", "Bearer t1", "Bearer t2",
    ]  # fmt: skip


def test_a_rotated_in_cluster_token_is_read_again_over_verified_tls(tmp_path: Path) -> None:
    cert, key = tls_files(tmp_path)
    api = FakeApiserver(tls=(cert, key))
    try:
        token = tmp_path / "token"
        token.write_text("sa-1")
        valid = {"bearer sa-1"}
        api.answer = lambda r: Answer() if r.headers.get("Authorization") in valid else Answer(401)
        where = InCluster(
            token_file=str(token), ca_file=str(cert),
            environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                     "KUBERNETES_SERVICE_PORT": str(api.port)},
        )  # fmt: skip
        kube = KubeClient(in_cluster=where)
        assert kube.host == api.url
        kube.get(NODE)
        token.write_text("sa-2")  # the kubelet rotated the projected token
        valid.clear()
        valid.add("bearer sa-2")
        kube.get(NODE)
        assert [r.headers.get("Authorization") for r in api.requests] == [
            "bearer sa-1", "bearer sa-1", "bearer sa-2",
        ]  # fmt: skip
        assert kube.credentials().token == "sa-2"
        assert kube.credentials().ca_path == str(cert)
    finally:
        api.close()


def test_a_401_that_a_refresh_does_not_cure_is_raised(api: FakeApiserver, tmp_path: Path) -> None:
    api.answer = lambda r: Answer(401, {"reason": "Unauthorized"})
    with pytest.raises(ApiError) as err:
        client(api, tmp_path).get(NODE)
    assert err.value.status == 401
    assert len(api.requests) == 2


def test_verbs_send_their_content_types_and_bodies(api: FakeApiserver, tmp_path: Path) -> None:
    kube = client(api, tmp_path)
    kube.merge_patch(NODE, {"metadata": {"labels": {"a": None}}})
    kube.json_patch(NODE, [{"op": "add", "path": "/x", "value": 1}])
    kube.apply(NODE, {"kind": "Node"}, "sod-test")
    kube.delete(NODE, propagation="Foreground")
    kube.list("/api/v1/pods", label_selector="app=x", field_selector="spec.nodeName=n1")
    sent: list[Request] = api.requests
    assert [r.headers.get("Content-Type") for r in sent[:3]] == [
        "application/merge-patch+json", "application/json-patch+json",
        "application/apply-patch+yaml",
    ]  # fmt: skip
    assert sent[2].path == NODE + "?fieldManager=sod-test&force=true"
    assert json.loads(sent[3].body)["propagationPolicy"] == "Foreground"
    assert sent[4].path == "/api/v1/pods?labelSelector=app%3Dx&fieldSelector=spec.nodeName%3Dn1"


def test_not_found_is_none_for_get_or_none_and_delete(api: FakeApiserver, tmp_path: Path) -> None:
    api.answer = lambda r: Answer(404, {"reason": "NotFound"})
    kube = client(api, tmp_path)
    assert kube.get_or_none(NODE) is None
    assert kube.delete(NODE) is None
    with pytest.raises(ApiError) as err:
        kube.get(NODE)
    assert err.value.not_found


def test_a_watch_yields_each_event_line(api: FakeApiserver, tmp_path: Path) -> None:
    lines = [{"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "5"}}},
             {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}]  # fmt: skip
    api.answer = lambda r: Answer(lines=lines)
    events = list(client(api, tmp_path).watch("/api/v1/pods", "3", timeout_seconds=60))
    assert events == lines
    query = api.requests[0].path.split("?", 1)[1]
    assert query == "watch=true&resourceVersion=3&allowWatchBookmarks=true&timeoutSeconds=60"


def test_no_answer_is_an_api_error(tmp_path: Path) -> None:
    api = FakeApiserver()
    kube = client(api, tmp_path)
    api.close()  # nothing listens on the port any more
    with pytest.raises(ApiError) as err:
        kube.get(NODE)
    assert err.value.status == 0
    assert err.value.retryable


def test_the_operators_async_face_addresses_resources_and_runs_off_the_loop(
    api: FakeApiserver, tmp_path: Path
) -> None:
    kube = AsyncKube(client(api, tmp_path))

    async def go() -> None:
        api.answer = lambda r: Answer(body={"items": [{"metadata": {"name": "vm"}}, "junk"]})
        assert await kube.list(KUBEVIRT, "virtualmachines", "t") == [{"metadata": {"name": "vm"}}]
        api.answer = lambda r: Answer(404, {"reason": "NotFound"})
        assert await kube.get(SOD, "securevms", "t", "gone") is None
        await kube.delete(KUBEVIRT, "virtualmachineinstancemigrations", "t", "m", uid="u-1")
        api.answer = lambda r: Answer(body={"status": {}})
        await kube.replace_status("t", "svm", {"phase": "Placed"})

    asyncio.run(go())
    list_, get, delete, status = api.requests
    assert list_.path == "/apis/kubevirt.io/v1/namespaces/t/virtualmachines"
    assert get.path == "/apis/sod.dev/v1alpha1/namespaces/t/securevms/gone"
    assert json.loads(delete.body)["preconditions"] == {"uid": "u-1"}
    assert (status.method, status.path) == (
        "PATCH", "/apis/sod.dev/v1alpha1/namespaces/t/securevms/svm/status",
    )  # fmt: skip
    assert json.loads(status.body) == [
        {"op": "add", "path": "/status", "value": {"phase": "Placed"}}
    ]

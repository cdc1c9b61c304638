"""The one client of the Kubernetes REST API: dict in, dict out, for every kind alike.

The official `kubernetes` package does what is easy to get wrong: its config loaders read a
kubeconfig (client certificates, tokens, exec plugins) or the in-cluster service account, and
its `ApiClient` builds the TLS connection pool from that. Requests and watches then go through
that pool as plain JSON (no generated models on the hot path; watches can be closed from
another thread). Credentials are refreshed the loaders' way before each request (a projected
service-account token rotates; an exec plugin's token expires), and once more, forcibly, when
the apiserver answers 401. A 429 or 503 with `Retry-After` is retried after that delay, a
bounded number of times, as client-go does.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as kube_client
from kubernetes import config as kube_config
from kubernetes.config import incluster_config

from sod_operator.api.rest import resource_path as resource_path  # re-exported
from sod_operator.kube.errors import ApiError

log = logging.getLogger("sod.kube")

JsonObj = dict[str, Any]
Query = Mapping[str, str | int | bool]

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


@dataclass(frozen=True)
class RetryPolicy:
    """How long a throttled request waits (the server's `Retry-After`, at most `max_wait`
    seconds) and how often it is retried before the 429/503 is raised."""

    max_retries: int = 3
    max_wait: float = 10.0


def retry_after(status: int, header: str | None, attempt: int, policy: RetryPolicy) -> float | None:
    """Seconds to wait before retry `attempt + 1`, or None: raise the error now.

    Only 429 (API Priority and Fairness rejected the request before running it) and 503 with
    a `Retry-After` header are retried, as in client-go; the request was not carried out, so
    any verb may be sent again.
    """
    if status not in (429, 503) or header is None or attempt >= policy.max_retries:
        return None
    try:
        seconds = float(header)
    except ValueError:
        return None  # an HTTP date: the apiserver never sends one
    return min(max(seconds, 0.0), policy.max_wait)


@dataclass(frozen=True)
class InCluster:
    """Where a pod finds its service account (the defaults), overridable for tests."""

    token_file: str = incluster_config.SERVICE_TOKEN_FILENAME
    ca_file: str = incluster_config.SERVICE_CERT_FILENAME
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    @staticmethod
    def available() -> bool:
        return bool(os.environ.get(incluster_config.SERVICE_HOST_ENV_NAME))


@dataclass(frozen=True)
class Credentials:
    """What another HTTP client (kopf's) needs to reach the same apiserver as this one."""

    server: str
    ca_path: str | None
    insecure: bool
    scheme: str | None
    token: str | None
    cert_path: str | None
    key_path: str | None


Loader = Callable[[Any], None]
"""Fills a `kubernetes.client.Configuration` (again, on a forced refresh)."""


def _loader(
    kubeconfig: Path | str | None, context: str | None, in_cluster: InCluster | None
) -> Loader:
    """`kubeconfig`, else the in-cluster service account, else the default kubeconfig."""
    if kubeconfig is None and (in_cluster is not None or InCluster.available()):
        where = in_cluster or InCluster()
        loader: Any = incluster_config.InClusterConfigLoader(  # type: ignore[no-untyped-call]
            token_filename=where.token_file, cert_filename=where.ca_file, environ=where.environ
        )
        load_in_cluster: Loader = loader.load_and_set
        return load_in_cluster

    def load(conf: Any) -> None:
        kube_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig is not None else None,
            context=context,
            client_configuration=conf,
            persist_config=False,
        )

    return load


class KubeClient:
    """Blocking JSON requests and watches against one apiserver; safe to share between threads."""

    def __init__(
        self,
        kubeconfig: Path | str | None = None,
        *,
        context: str | None = None,
        user_agent: str = "sod",
        headers: Mapping[str, str] | None = None,
        in_cluster: InCluster | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._load = _loader(kubeconfig, context, in_cluster)
        self._conf: Any = type.__call__(kube_client.Configuration)  # not the global default
        self._load(self._conf)
        self._auth_lock = threading.Lock()
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._headers: dict[str, str] = {
            "User-Agent": user_agent,
            "Accept": JSON,
            **(headers or {}),
        }
        """Sent with every request (e.g. `Impersonate-User`), besides the credentials."""
        self._build_pool()
        self._watches: set[urllib3.BaseHTTPResponse] = set()
        self._lock = threading.Lock()
        self._closed = False

    def _build_pool(self) -> None:
        self._api_client = kube_client.ApiClient(self._conf)  # owns (keeps alive) the pool
        self._pool: urllib3.PoolManager = self._api_client.rest_client.pool_manager
        self._tls = self._tls_files()
        self.host: str = str(self._conf.host).rstrip("/")

    def _tls_files(self) -> tuple[Any, ...]:
        c = self._conf
        return (c.ssl_ca_cert, c.cert_file, c.key_file, c.verify_ssl, c.host)

    # ------------------------------------------------------------------ credentials

    def _authorization(self) -> str | None:
        with self._auth_lock:
            # The loaders' hook runs inside: it re-reads a rotated token file once its refresh
            # period passed, and re-runs an exec plugin once its credential expired.
            token: str | None = self._conf.get_api_key_with_prefix("BearerToken", "authorization")
            return token

    def refresh_credentials(self) -> None:
        """Run the config loader again (token file, exec plugin, certificates) at once."""
        with self._auth_lock:
            self._load(self._conf)
            if self._tls_files() != self._tls:
                self._build_pool()

    def credentials(self) -> Credentials:
        header = self._authorization()
        scheme, token = None, None
        if header:
            parts = header.split(" ", 1)
            scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
        c = self._conf
        return Credentials(
            server=self.host,
            ca_path=c.ssl_ca_cert,
            insecure=not c.verify_ssl,
            scheme=scheme,
            token=token,
            cert_path=c.cert_file,
            key_path=c.key_file,
        )

    # ------------------------------------------------------------------ transport

    def _request_headers(self, content_type: str | None) -> dict[str, str]:
        headers = dict(self._headers)
        auth = self._authorization()
        if auth:
            headers["Authorization"] = auth
        if content_type is not None:
            headers["Content-Type"] = content_type
        return headers

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Query | None,
        body: Any,
        content_type: str,
        timeout: float | urllib3.Timeout,
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """One request, retried on 401 (once, after a credential refresh) and on 429/503."""
        url = self.host + path
        if query:
            url += "?" + urllib.parse.urlencode({k: _q(v) for k, v in query.items()})
        data = json.dumps(body).encode() if body is not None else None
        refreshed, attempt = False, 0
        while True:
            headers = self._request_headers(content_type if data is not None else None)
            try:
                resp = self._pool.request(
                    method, url, body=data, headers=headers, timeout=timeout,
                    retries=False, preload_content=not stream,
                )  # fmt: skip
            except (urllib3.exceptions.HTTPError, OSError) as err:
                raise ApiError.no_answer(method, path, err) from err
            if 200 <= resp.status < 300:
                return resp
            payload = _drain(resp) if stream else resp.data
            if resp.status == 401 and not refreshed:
                refreshed = True
                self.refresh_credentials()
                continue
            wait = retry_after(resp.status, resp.headers.get("Retry-After"), attempt, self._retry)
            if wait is None:
                raise ApiError(method, path, resp.status, payload)
            attempt += 1
            log.info("%s %s: HTTP %d, retry %d in %.1f s", method, path, resp.status, attempt, wait)
            self._sleep(wait)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Any = None,
        content_type: str = JSON,
        timeout: float = 30.0,
    ) -> JsonObj:
        resp = self._send(
            method, path, query=query, body=body, content_type=content_type, timeout=timeout
        )
        out = json.loads(resp.data) if resp.data else {}
        return out if isinstance(out, dict) else {}

    # ------------------------------------------------------------------ verbs

    def get(self, path: str) -> JsonObj:
        return self.request("GET", path)

    def get_text(self, path: str, timeout: float = 30.0) -> str:
        """A non-JSON resource, e.g. the apiserver's Prometheus `/metrics`."""
        resp = self._send("GET", path, query=None, body=None, content_type="", timeout=timeout)
        return resp.data.decode()

    def get_or_none(self, path: str) -> JsonObj | None:
        try:
            return self.get(path)
        except ApiError as err:
            if err.not_found:
                return None
            raise

    def list(
        self, path: str, label_selector: str | None = None, field_selector: str | None = None
    ) -> JsonObj:
        query: dict[str, str | int | bool] = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        return self.request("GET", path, query=query)

    def create(self, path: str, obj: JsonObj) -> JsonObj:
        return self.request("POST", path, body=obj)

    def replace(self, path: str, obj: JsonObj) -> JsonObj:
        """PUT: with `metadata.resourceVersion` set, a 409 says someone wrote in between."""
        return self.request("PUT", path, body=obj)

    def merge_patch(self, path: str, patch: JsonObj) -> JsonObj:
        return self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    def json_patch(self, path: str, ops: builtins.list[JsonObj]) -> JsonObj:
        return self.request("PATCH", path, body=ops, content_type=JSON_PATCH)

    def apply(self, path: str, obj: JsonObj, field_manager: str, force: bool = True) -> JsonObj:
        """Server-side apply (JSON is YAML): how objects too big for kubectl apply go in."""
        return self.request(
            "PATCH",
            path,
            query={"fieldManager": field_manager, "force": force},
            body=obj,
            content_type=APPLY_PATCH,
        )

    def delete(
        self, path: str, propagation: str | None = None, uid: str | None = None
    ) -> JsonObj | None:
        """Delete (None when it was already gone); `uid` deletes only that incarnation."""
        body: JsonObj | None = None
        if propagation or uid:
            body = {"kind": "DeleteOptions", "apiVersion": "v1"}
            if propagation:
                body["propagationPolicy"] = propagation
            if uid:
                body["preconditions"] = {"uid": uid}
        try:
            return self.request("DELETE", path, body=body)
        except ApiError as err:
            if err.not_found:
                return None
            raise

    # ------------------------------------------------------------------ watches

    def watch(
        self,
        path: str,
        resource_version: str,
        timeout_seconds: int = 300,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Iterator[JsonObj]:
        """Watch events ({"type", "object"}) from `resource_version`, with bookmarks.

        Ends when the server closes the stream (after `timeout_seconds`), the connection drops,
        or `close_watches` is called; a 410 Gone arrives as an ERROR event for the caller to
        re-list (`Informer` does all of that).
        """
        query: dict[str, str | int | bool] = {
            "watch": True,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": timeout_seconds,
        }
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        timeout = urllib3.Timeout(connect=10, read=timeout_seconds + 30)
        resp = self._send(
            "GET", path, query=query, body=None, content_type=JSON, timeout=timeout, stream=True
        )
        with self._lock:
            if self._closed:  # closed while this watch was being opened
                resp.release_conn()
                return
            self._watches.add(resp)
        yield from self._events(resp)

    def _events(self, resp: urllib3.BaseHTTPResponse) -> Iterator[JsonObj]:
        buf = b""
        complete = False
        try:
            for chunk in resp.stream(16384, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
            complete = True
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            return  # closed under us (close_watches) or the connection dropped: caller resumes
        finally:
            with self._lock:
                self._watches.discard(resp)
            if not complete:
                # Aborted (close_watches, an error, or the caller stopped reading): unread chunk
                # bytes would be taken for the next response on a pooled connection.
                resp.close()
            resp.release_conn()

    def close_watches(self) -> None:
        """Abort every open watch stream and refuse new ones (on shutdown, so watcher threads
        end at once)."""
        with self._lock:
            self._closed = True
            watches = builtins.list(self._watches)
        for resp in watches:
            with contextlib.suppress(Exception):  # best effort on shutdown
                resp.shutdown()


def _drain(resp: urllib3.BaseHTTPResponse) -> bytes:
    try:
        return resp.read()
    finally:
        resp.release_conn()


def _q(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

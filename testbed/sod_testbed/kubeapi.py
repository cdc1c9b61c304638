"""A small dict-in, dict-out client for the Kubernetes REST API, used by the sandbox and the
KubeVirt simulator.

The official `kubernetes` client loads the kubeconfig and builds the TLS connection pool; requests
and watches go through that pool as plain JSON, so every kind (Pods, Nodes, KubeVirt's CRDs) is
handled alike and watches can be closed from another thread.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import config as kube_config
from sod_operator.api.rest import resource_path as resource_path  # re-exported

JsonObj = dict[str, Any]

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class ApiError(Exception):
    """A non-2xx answer of the apiserver, with its Status object when it sent one."""

    def __init__(self, method: str, path: str, status: int, body: bytes):
        self.method = method
        self.path = path
        self.status = status
        try:
            self.body: JsonObj = json.loads(body)
        except ValueError:
            self.body = {"message": body.decode(errors="replace")}
        self.reason = str(self.body.get("reason", ""))
        self.message = str(self.body.get("message", ""))
        super().__init__(f"{method} {path}: HTTP {status} {self.reason}: {self.message}")


class KubeApi:
    def __init__(self, kubeconfig: Path, user_agent: str = "sod-sandbox"):
        client = kube_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig)
        )
        self._client = client  # keeps the pool alive
        self._pool: urllib3.PoolManager = client.rest_client.pool_manager
        self.host = client.configuration.host.rstrip("/")
        self._headers = {"User-Agent": user_agent, "Accept": JSON}
        # kubernetes>=37 keeps a kubeconfig's bearer token under "BearerToken".
        token = client.configuration.get_api_key_with_prefix(
            "authorization"
        ) or client.configuration.get_api_key_with_prefix("BearerToken")
        if token:
            self._headers["Authorization"] = token
        self._watches: set[urllib3.BaseHTTPResponse] = set()
        self._lock = threading.Lock()
        self._closed = False

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = JSON,
        timeout: float = 30.0,
    ) -> JsonObj:
        url = self.host + path
        if query:
            url += "?" + urllib.parse.urlencode({k: _q(v) for k, v in query.items()})
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        resp = self._pool.request(
            method, url, body=data, headers=headers, timeout=timeout, retries=False
        )
        if not 200 <= resp.status < 300:
            raise ApiError(method, path, resp.status, resp.data)
        return json.loads(resp.data) if resp.data else {}

    def get(self, path: str) -> JsonObj:
        return self.request("GET", path)

    def get_or_none(self, path: str) -> JsonObj | None:
        try:
            return self.get(path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def list(self, path: str, label_selector: str | None = None) -> JsonObj:
        query: dict[str, str | int | bool] = {}
        if label_selector:
            query["labelSelector"] = label_selector
        return self.request("GET", path, query=query)

    def create(self, path: str, obj: JsonObj) -> JsonObj:
        return self.request("POST", path, body=obj)

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

    def delete(self, path: str, propagation: str | None = None) -> JsonObj | None:
        body = {"propagationPolicy": propagation} if propagation else None
        try:
            return self.request("DELETE", path, body=body)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def watch(
        self,
        path: str,
        resource_version: str,
        timeout_seconds: int = 300,
        label_selector: str | None = None,
    ) -> Iterator[JsonObj]:
        """Watch events ({"type", "object"}) from `resource_version`, with bookmarks.

        Ends when the server closes the stream (after `timeout_seconds`) or `close_watches` is
        called; a 410 Gone arrives as an ERROR event for the caller to re-list.
        """
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            query["labelSelector"] = label_selector
        url = self.host + path + "?" + urllib.parse.urlencode(query)
        resp = self._pool.request(
            "GET",
            url,
            headers=self._headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=timeout_seconds + 30),
            retries=False,
        )
        if resp.status != 200:
            data = resp.read()
            resp.release_conn()
            raise ApiError("WATCH", path, resp.status, data)
        with self._lock:
            if self._closed:  # closed while this watch was being opened
                resp.release_conn()
                return
            self._watches.add(resp)
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
            return  # closed under us (close_watches) or the connection dropped: caller re-lists
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
            watches = list(self._watches)
        for resp in watches:
            with contextlib.suppress(Exception):  # best effort on shutdown
                resp.shutdown()


def _q(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

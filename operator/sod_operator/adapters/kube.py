"""The operator's client of the Kubernetes API: the only code that writes to the cluster.

The official `kubernetes` client loads the kubeconfig (or the in-cluster service account) and
owns the TLS connection pool; requests go through that pool as plain JSON (every kind alike,
no generated-model overhead on the hot path) in a worker thread, so the event loop that kopf
and the planner share is never blocked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import urllib3
from kubernetes import client as kube_client
from kubernetes import config as kube_config

from sod_operator.api.constants import GROUP, VERSION
from sod_operator.api.rest import resource_path as resource_path  # re-exported

log = logging.getLogger("sod.kube")
Json = dict[str, Any]

JSON: Final = "application/json"
MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
KUBEVIRT: Final = "kubevirt.io/v1"
SOD: Final = f"{GROUP}/{VERSION}"


class ApiError(Exception):
    """A non-2xx answer, with the apiserver's Status reason and message."""

    def __init__(self, method: str, path: str, status: int, body: bytes):
        self.status = status
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {"message": body.decode(errors="replace")}
        self.reason = str(parsed.get("reason", "")) if isinstance(parsed, dict) else ""
        self.message = str(parsed.get("message", "")) if isinstance(parsed, dict) else ""
        super().__init__(f"{method} {path}: HTTP {status} {self.reason}: {self.message}")

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def conflict(self) -> bool:
        return self.status == 409


def load_api_client(kubeconfig: Path | None, context: str | None = None) -> kube_client.ApiClient:
    """A client from `kubeconfig`, else the in-cluster service account, else ~/.kube/config."""
    api: kube_client.ApiClient
    if kubeconfig is not None:
        api = kube_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), context=context
        )
        return api
    try:
        kube_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kube_config.ConfigException:
        api = kube_config.new_client_from_config(context=context)  # type: ignore[no-untyped-call]
        return api
    return kube_client.ApiClient()


class Kube:
    """Blocking JSON requests (`request`) and their async forms (`a*` methods)."""

    def __init__(self, api_client: kube_client.ApiClient, user_agent: str = "sod-operator"):
        self._client = api_client
        conf = api_client.configuration
        self._conf = conf
        self._pool: urllib3.PoolManager = api_client.rest_client.pool_manager
        self.host = str(conf.host).rstrip("/")
        self._user_agent = user_agent

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": self._user_agent, "Accept": JSON}
        hook = getattr(self._conf, "refresh_api_key_hook", None)
        if hook is not None:
            hook(self._conf)  # in-cluster: re-reads the rotated service account token
        # kubernetes>=37 keeps a token (kubeconfig or in-cluster ServiceAccount) under
        # "BearerToken"; reading only "authorization" made every request anonymous.
        token = self._conf.get_api_key_with_prefix(
            "BearerToken"
        ) or self._conf.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON,
        timeout: float = 30.0,
    ) -> Json:
        url = self.host + path
        if query:
            url += "?" + urllib.parse.urlencode(dict(query))
        headers = self._headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        resp = self._pool.request(
            method, url, body=data, headers=headers, timeout=timeout, retries=False
        )
        if not 200 <= resp.status < 300:
            raise ApiError(method, path, resp.status, resp.data)
        out = json.loads(resp.data) if resp.data else {}
        return out if isinstance(out, dict) else {}

    async def arequest(self, method: str, path: str, **kw: Any) -> Json:
        return await asyncio.to_thread(self.request, method, path, **kw)

    # -------------------------------------------------------------- the operator's writes

    async def create(self, api_version: str, plural: str, namespace: str, body: Json) -> Json:
        return await self.arequest("POST", resource_path(api_version, plural, namespace), body=body)

    async def merge_patch(
        self,
        api_version: str,
        plural: str,
        namespace: str,
        name: str,
        patch: Json,
        sub: str | None = None,
    ) -> Json:
        return await self.arequest(
            "PATCH",
            resource_path(api_version, plural, namespace, name, sub),
            body=patch,
            content_type=MERGE_PATCH,
        )

    async def json_patch(
        self,
        api_version: str,
        plural: str,
        namespace: str,
        name: str,
        ops: list[Json],
        sub: str | None = None,
    ) -> Json:
        return await self.arequest(
            "PATCH",
            resource_path(api_version, plural, namespace, name, sub),
            body=ops,
            content_type=JSON_PATCH,
        )

    async def delete(
        self, api_version: str, plural: str, namespace: str, name: str, uid: str | None = None
    ) -> None:
        body: Json = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.arequest(
                "DELETE", resource_path(api_version, plural, namespace, name), body=body
            )
        except ApiError as err:
            if not err.not_found:
                raise

    async def replace_status(self, namespace: str, name: str, status: Json) -> Json:
        """Replace the whole `status` of a SecureVM (JSON patch `add` replaces or creates it)."""
        return await self.json_patch(
            SOD,
            "securevms",
            namespace,
            name,
            [{"op": "add", "path": "/status", "value": status}],
            "status",
        )

    async def get(
        self, api_version: str, plural: str, namespace: str | None, name: str
    ) -> Json | None:
        try:
            return await self.arequest("GET", resource_path(api_version, plural, namespace, name))
        except ApiError as err:
            if err.not_found:
                return None
            raise

    async def list(self, api_version: str, plural: str, namespace: str | None = None) -> list[Json]:
        out = await self.arequest("GET", resource_path(api_version, plural, namespace))
        items = out.get("items") or []
        return [i for i in items if isinstance(i, dict)]

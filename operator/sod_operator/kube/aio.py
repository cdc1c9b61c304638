"""The operator's async face of `KubeClient`: resources addressed by (apiVersion, plural,
namespace, name), each request run in a worker thread so the event loop that kopf and the
planner share is never blocked."""

from __future__ import annotations

import asyncio
from typing import Any, Final

from sod_operator.api.constants import GROUP, VERSION
from sod_operator.api.rest import resource_path
from sod_operator.kube.client import JSON_PATCH, MERGE_PATCH, JsonObj, KubeClient
from sod_operator.kube.errors import ApiError

KUBEVIRT: Final = "kubevirt.io/v1"
SOD: Final = f"{GROUP}/{VERSION}"


class AsyncKube:
    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def arequest(self, method: str, path: str, **kw: Any) -> JsonObj:
        return await asyncio.to_thread(self.client.request, method, path, **kw)

    async def create(self, api_version: str, plural: str, namespace: str, body: JsonObj) -> JsonObj:
        return await self.arequest("POST", resource_path(api_version, plural, namespace), body=body)

    async def merge_patch(
        self,
        api_version: str,
        plural: str,
        namespace: str,
        name: str,
        patch: JsonObj,
        sub: str | None = None,
    ) -> JsonObj:
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
        ops: list[JsonObj],
        sub: str | None = None,
    ) -> JsonObj:
        return await self.arequest(
            "PATCH",
            resource_path(api_version, plural, namespace, name, sub),
            body=ops,
            content_type=JSON_PATCH,
        )

    async def delete(
        self, api_version: str, plural: str, namespace: str, name: str, uid: str | None = None
    ) -> None:
        """Delete (only the incarnation `uid`, when given); already gone is fine."""
        path = resource_path(api_version, plural, namespace, name)
        await asyncio.to_thread(self.client.delete, path, None, uid)

    async def replace_status(
        self, namespace: str, name: str, status: JsonObj, api_version: str = SOD,
        plural: str = "securevms",
    ) -> JsonObj:  # fmt: skip
        """Replace the whole `status` (JSON patch `add` replaces or creates it)."""
        return await self.json_patch(
            api_version, plural, namespace, name,
            [{"op": "add", "path": "/status", "value": status}], "status",
        )  # fmt: skip

    async def get(
        self, api_version: str, plural: str, namespace: str | None, name: str
    ) -> JsonObj | None:
        try:
            return await self.arequest("GET", resource_path(api_version, plural, namespace, name))
        except ApiError as err:
            if err.not_found:
                return None
            raise

    async def list(
        self, api_version: str, plural: str, namespace: str | None = None
    ) -> list[JsonObj]:
        out = await self.arequest("GET", resource_path(api_version, plural, namespace))
        items = out.get("items") or []
        return [i for i in items if isinstance(i, dict)]

"""Small readers of Kubernetes object metadata, shared by every cache."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ObjectKey = tuple[str, str]
"""(namespace, name); the namespace is "" for cluster-scoped objects."""


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta["name"])


def resource_version(obj: Mapping[str, Any]) -> int:
    """The resourceVersion as a number (0 when absent or not numeric).

    The apiserver calls it opaque; etcd's revision is what every apiserver serves today, and
    comparing it is how a cache tells a stale watch event from our own newer write.
    """
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0

"""Kubernetes I/O for every component: the only package that talks to the apiserver.

* `client` — `KubeClient`: kubeconfig / in-cluster auth through the official `kubernetes`
  package's loaders, token refresh, TLS, `Retry-After`; JSON requests and watches.
* `errors` — `ApiError`, with `not_found` / `conflict` / `gone` / `retryable` … predicates.
* `informer` — `Informer`: list + watch into a cache, bookmarks, relist on 410, back-off.
* `events` — `EventRecorder`: core/v1 Events, blocking or fire-and-forget.
* `workqueue` — `WorkQueue`: client-go's queue with per-key back-off and an overall rate limit.
* `aio` — `AsyncKube`: the operator's async, resource-addressed face of the client.
* `objects` — `object_key`, `resource_version`.

Import-linter and ruff keep `kubernetes` and `urllib3` inside this package.
"""

from sod_operator.api.rest import resource_path
from sod_operator.kube.aio import KUBEVIRT, SOD, AsyncKube
from sod_operator.kube.client import (
    APPLY_PATCH,
    JSON,
    JSON_PATCH,
    MERGE_PATCH,
    Credentials,
    InCluster,
    JsonObj,
    KubeClient,
    RetryPolicy,
)
from sod_operator.kube.errors import ApiError
from sod_operator.kube.events import EventRecorder, Involved
from sod_operator.kube.informer import SYNCED, Informer
from sod_operator.kube.objects import ObjectKey, object_key, resource_version
from sod_operator.kube.workqueue import Backoff, RateLimiter, WorkQueue

__all__ = [
    "APPLY_PATCH",
    "JSON",
    "JSON_PATCH",
    "KUBEVIRT",
    "MERGE_PATCH",
    "SOD",
    "SYNCED",
    "ApiError",
    "AsyncKube",
    "Backoff",
    "Credentials",
    "EventRecorder",
    "InCluster",
    "Informer",
    "Involved",
    "JsonObj",
    "KubeClient",
    "ObjectKey",
    "RateLimiter",
    "RetryPolicy",
    "WorkQueue",
    "object_key",
    "resource_path",
    "resource_version",
]

"""The test bed's Kubernetes client is the product's: `sod_operator.kube.KubeClient`.

Kept as the test bed's import point (`KubeApi(kubeconfig, user_agent=...)`, `ApiError`,
`JsonObj`, `resource_path`) so the test bed, the virt-handler player and the e2e tests talk to the
apiserver exactly as the operator, the verifier and the node-agent do; `write_kubeconfig_file`
writes the kubeconfig of every identity the test bed makes.
"""

import base64
from pathlib import Path

import yaml
from sod_operator.kube import ApiError, JsonObj, resource_path
from sod_operator.kube import KubeClient as KubeApi

__all__ = ["ApiError", "JsonObj", "KubeApi", "resource_path", "write_kubeconfig_file"]


def write_kubeconfig_file(
    path: Path,
    server: str,
    ca_pem: bytes,
    user: str,
    credentials: dict[str, str],
    context: str = "sod-sandbox",
) -> Path:
    """A kubeconfig (mode 0600) with the CA embedded and one user whose `credentials` are a
    token or embedded client certificate data."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "sod-sandbox",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": context, "context": {"cluster": "sod-sandbox", "user": user}}],
        "current-context": context,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path

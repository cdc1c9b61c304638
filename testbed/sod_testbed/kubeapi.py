"""The test bed's Kubernetes client is the product's: `sod_operator.kube.KubeClient`.

Kept as the test bed's import point (`KubeApi(kubeconfig, user_agent=...)`, `ApiError`,
`JsonObj`, `resource_path`) so the test bed, the simulator and the e2e tests talk to the
apiserver exactly as the operator, the verifier and the node-agent do.
"""

from sod_operator.kube import ApiError, JsonObj, resource_path
from sod_operator.kube import KubeClient as KubeApi

__all__ = ["ApiError", "JsonObj", "KubeApi", "resource_path"]

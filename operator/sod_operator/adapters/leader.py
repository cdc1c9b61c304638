"""Leader election lives in the Kubernetes I/O package (`sod_operator.kube.leader`), shared by
the operator and the verifier; this name stays for the operator's imports."""

from sod_operator.kube.leader import COORDINATION, LeaderElector, LeaseConfig

__all__ = ["COORDINATION", "LeaderElector", "LeaseConfig"]

"""The local test bed, used by the e2e tests AND `sodctl sandbox` (one implementation).

* `cluster.LocalCluster`: etcd + kube-apiserver (TLS, RBAC, admission) + controller-manager +
  scheduler + kwok fake nodes, our CRDs and KubeVirt's, real virt-api and virt-controller
  (`kubevirt`); start/stop, state file, extension points for node services and extra
  supervised processes.
* `handler_player`: plays only KubeVirt's node side (virt-handler) under node-bound identities
  (process or thread); `informer` is its list+watch cache.
* `migration_model`: the pure pre-copy duration model the player uses.
* `binaries`, `pki`, `processes`, `kubeapi`, `nodes`: the pieces LocalCluster is made of.
* `swtpm`, `trust`: per-node software TPMs and the trust monitor's services (issue 5).

Kubernetes client imports are allowed here (a sandbox component, not the operator's core).
"""

"""The Helm chart's values as a pydantic model, the source of `values.schema.json`
and `values.yaml`.

`python -m sod_codegen.crdgen --write` renders both files from `ChartValues` (the drift test
fails when a committed copy differs):

* `values.schema.json` is plain JSON Schema *with* `additionalProperties: false`, so Helm rejects a
  misspelt key on install, upgrade, lint and template (cert-manager does the same). CRD schemas must
  never carry that keyword; this target is the exception the generator allows.
* `values.yaml` is the same defaults with every field's docstring as a `# keyName is …` comment
  above the key (Helm best practice: every value documented, comment starting with its name).

Defaults live here once. Kubernetes pass-through objects (resources, affinity, tolerations) stay
free-form maps: the apiserver validates them when the chart's objects are applied.
"""

from __future__ import annotations

import json
import textwrap
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[int, Field(ge=1, le=3600)]
# Prometheus durations as written in a rule's `for:` (e.g. `5m`, `90s`).
PromDuration = Annotated[str, Field(pattern=r"^([0-9]+(ms|s|m|h|d|w|y))+$", max_length=32)]
LogLevel = Literal["debug", "info", "warning", "error"]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]
LabelMap = dict[str, str]
KubeObject = dict[str, Any]


class _Values(BaseModel):
    """camelCase keys, unknown keys rejected, field docstrings become descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
    )


class Global(_Values):
    """Values shared with parent charts. Open (parents may set their own globals)."""

    model_config = ConfigDict(extra="allow")  # merged with _Values' settings by pydantic

    image_pull_secrets: list[str] = Field(default_factory=list)
    """imagePullSecrets is a list of Secret names (in the release namespace) used to pull every
    image of the chart, e.g. `[regcred]`."""
    priority_class_name: str = ""
    """priorityClassName is the PriorityClass of every pod of the chart unless a component sets
    its own. Empty means the cluster default."""
    common_labels: LabelMap = Field(default_factory=dict)
    """commonLabels are added to every object the chart creates."""


class Crds(_Values):
    enabled: bool = True
    """enabled renders the four `sod.dev` CRDs (SecureVM, ServerSecurityProfile, SecurityPackage,
    NodeAttestation) from the chart, so `helm upgrade` upgrades them. Set to false when the CRDs
    are managed elsewhere (e.g. `kubectl apply -f crds/` by a cluster admin)."""
    keep: bool = True
    """keep adds `helm.sh/resource-policy: keep` to the CRDs, so `helm uninstall` leaves them (and
    every SecureVM, profile and attestation) in place. Deleting a CRD deletes all of its objects."""


class Rbac(_Values):
    create: bool = True
    """create makes the ClusterRoles, Roles and bindings of the operator, the verifier and the
    node-agent. Set to false only if you grant the same permissions yourself."""
    aggregate_to_default_roles: bool = True
    """aggregateToDefaultRoles adds SecureVM permissions to Kubernetes' `view`, `edit` and `admin`
    ClusterRoles, so a tenant bound to `edit` in a namespace can manage SecureVMs there."""
    catalog_reader_groups: list[str] = Field(default_factory=lambda: ["system:authenticated"])
    """catalogReaderGroups are the groups that may read (get, list, watch) the cluster-scoped
    ServerSecurityProfiles and SecurityPackages, so tenants can see what they can ask for. Empty
    means no binding (the ClusterRole `<fullname>-catalog-reader` is still created).
    NodeAttestations are never granted to tenants."""


class Image(_Values):
    repository: str = Field(min_length=1, max_length=512)
    """repository is the image name without tag or digest."""
    tag: str = Field(default="", max_length=128)
    """tag is the image tag. Empty means the chart's appVersion."""
    digest: str = Field(default="", pattern=r"^(sha256:[a-f0-9]{64})?$")
    """digest pins the image by content (`sha256:…`); when set it is used instead of the tag."""
    pull_policy: PullPolicy = "IfNotPresent"
    """pullPolicy is the container imagePullPolicy."""


class ServiceAccount(_Values):
    create: bool = True
    """create makes the ServiceAccount. Each component has its own, so each has only its own
    permissions."""
    name: str = Field(default="", max_length=253)
    """name is the ServiceAccount to use. Empty means `<fullname>-<component>`."""
    annotations: LabelMap = Field(default_factory=dict)
    """annotations are added to the ServiceAccount."""


class Probe(_Values):
    enabled: bool = True
    """enabled adds the probe to the container."""
    initial_delay_seconds: Annotated[int, Field(ge=0, le=3600)] = 5
    """initialDelaySeconds is the wait before the first probe."""
    period_seconds: Seconds = 10
    """periodSeconds is the time between probes."""
    timeout_seconds: Seconds = 5
    """timeoutSeconds is how long one probe may take."""
    failure_threshold: Annotated[int, Field(ge=1, le=100)] = 3
    """failureThreshold is how many failed probes in a row count as a failure."""


class LeaderElection(_Values):
    enabled: bool = True
    """enabled makes the replicas elect one leader through a coordination.k8s.io Lease in the
    release namespace; the others wait as hot standbys. Required with more than one replica."""
    lease_duration_seconds: Seconds = 15
    """leaseDurationSeconds is how long a standby waits after the leader stopped renewing before
    it takes over."""
    renew_deadline_seconds: Seconds = 10
    """renewDeadlineSeconds is how long the leader keeps trying to renew before it steps down."""
    retry_period_seconds: Seconds = 2
    """retryPeriodSeconds is the time between two attempts to acquire or renew the Lease."""


class PodDisruptionBudget(_Values):
    enabled: bool = True
    """enabled creates a PodDisruptionBudget when the component runs more than one replica."""
    min_available: Annotated[int, Field(ge=0, le=100)] = 1
    """minAvailable is the number of pods a voluntary disruption (a node drain) must leave."""


class _Workload(_Values):
    """What every component's pods have in common."""

    log_level: LogLevel = "info"
    """logLevel is the component's log level."""
    extra_args: list[str] = Field(default_factory=list)
    """extraArgs are appended to the container's command line."""
    extra_env: list[KubeObject] = Field(default_factory=list)
    """extraEnv are extra container environment variables (Kubernetes `EnvVar` objects)."""
    resources: KubeObject = Field(default_factory=dict)
    """resources are the container's requests and limits (a Kubernetes `ResourceRequirements`)."""
    node_selector: LabelMap = Field(default_factory=lambda: {"kubernetes.io/os": "linux"})
    """nodeSelector restricts the pods to nodes with these labels. Helm merges your map with this
    default; set a key to null to drop it."""
    tolerations: list[KubeObject] = Field(default_factory=list)
    """tolerations let the pods run on tainted nodes (Kubernetes `Toleration` objects)."""
    affinity: KubeObject = Field(default_factory=dict)
    """affinity is the pods' Kubernetes `Affinity`."""
    priority_class_name: str = ""
    """priorityClassName overrides `global.priorityClassName` for this component."""
    pod_annotations: LabelMap = Field(default_factory=dict)
    """podAnnotations are added to the pods."""
    pod_labels: LabelMap = Field(default_factory=dict)
    """podLabels are added to the pods."""


OPERATOR_IMAGE = "ghcr.io/sod-operator/sod-operator"
NODE_AGENT_IMAGE = "ghcr.io/sod-operator/sod-node-agent"
_OPERATOR_RESOURCES: KubeObject = {
    "requests": {"cpu": "100m", "memory": "192Mi"},
    "limits": {"memory": "512Mi"},
}
_VERIFIER_RESOURCES: KubeObject = {
    "requests": {"cpu": "50m", "memory": "128Mi"},
    "limits": {"memory": "384Mi"},
}
_AGENT_RESOURCES: KubeObject = {
    "requests": {"cpu": "10m", "memory": "48Mi"},
    "limits": {"memory": "128Mi"},
}
# Spread replicas so a single node failure cannot take out every replica.
_SPREAD_AFFINITY = {
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "COMPONENT"}},
                },
            }
        ]
    }
}


def _spread(component: str) -> KubeObject:
    return json.loads(json.dumps(_SPREAD_AFFINITY).replace("COMPONENT", component))  # type: ignore[no-any-return]


class Relocation(_Values):
    """The operator's relocation tunables (`sod-operator --help`, group "relocation"); the
    defaults equal `sod_operator.policy.settings.RelocationSettings` (a test keeps them equal)."""

    max_migrations_per_cluster: Annotated[int, Field(ge=1, le=1000)] = 5
    """maxMigrationsPerCluster is how many migrations the operator runs at once; KubeVirt's own
    `parallelMigrationsPerCluster` default (more would only queue inside KubeVirt)."""
    max_outbound_per_node: Annotated[int, Field(ge=1, le=100)] = 2
    """maxOutboundPerNode is how many migrations may leave one node at once (KubeVirt's
    `parallelOutboundMigrationsPerNode` default)."""
    retry_base_seconds: Annotated[float, Field(ge=1, le=3600)] = 10
    """retryBaseSeconds is the back-off after the first failed migration; it doubles per further
    failure."""
    retry_max_seconds: Annotated[float, Field(ge=1, le=86400)] = 300
    """retryMaxSeconds caps that back-off."""
    node_cooldown_seconds: Annotated[float, Field(ge=0, le=86400)] = 300
    """nodeCooldownSeconds keeps a node that recently lost a verified profile from being chosen
    as a migration target while another compliant node exists (anti-flapping)."""
    mtd_budget: Annotated[int, Field(ge=0, le=1000)] = 1
    """mtdBudget is how many moving-target-defense migrations may run at once, cluster-wide."""
    resync_seconds: Annotated[float, Field(ge=1, le=86400)] = 60
    """resyncSeconds is the longest time between two plans of one SecureVM (a level-triggered
    safety net; changes are acted on at once)."""


class Operator(_Workload):
    replica_count: Annotated[int, Field(ge=0, le=10)] = 2
    """replicaCount is the number of operator pods. Only the leader reconciles; the others take
    over within `leaderElection.leaseDurationSeconds` when it fails."""
    image: Image = Field(default_factory=lambda: Image(repository=OPERATOR_IMAGE))
    """image is the operator image (it also contains `sod-verifier`)."""
    service_account: ServiceAccount = Field(default_factory=ServiceAccount)
    """serviceAccount of the operator pods."""
    log_level: Literal["debug", "info"] = "info"
    """logLevel is the operator's log level (`debug` adds `--debug`)."""
    namespaces: list[Annotated[str, Field(max_length=63)]] = Field(default_factory=list)
    """namespaces restricts the SecureVMs the operator handles to these namespaces (`--namespace`,
    repeated). Empty means all namespaces. Its RBAC stays cluster-wide (nodes and the catalog are
    cluster-scoped)."""
    leader_election: LeaderElection = Field(default_factory=LeaderElection)
    """leaderElection among the operator replicas (`--lease-*`; the Lease is named
    `<fullname>-operator`)."""
    relocation: Relocation = Field(default_factory=Relocation)
    """relocation tunes concurrency, back-off and anti-flapping of relocations."""
    liveness_port: Port = 8081
    """livenessPort serves kopf's `/healthz` (`--liveness-port`), used by both probes."""
    liveness_probe: Probe = Field(
        default_factory=lambda: Probe(initial_delay_seconds=10, failure_threshold=6)
    )
    """livenessProbe restarts an operator whose kopf health endpoint stopped answering. Caveat:
    `sod-operator` starts that endpoint only once it leads, so a standby replica fails the probe
    and is restarted now and then (it rejoins the Lease queue); disable the probe, or run one
    replica, if that matters more to you than detecting a hung leader."""
    readiness_probe: Probe = Field(default_factory=Probe)
    """readinessProbe marks a replica ready once it leads and kopf runs (standbys stay unready)."""
    pod_disruption_budget: PodDisruptionBudget = Field(default_factory=PodDisruptionBudget)
    """podDisruptionBudget of the operator pods."""
    resources: KubeObject = Field(default_factory=lambda: dict(_OPERATOR_RESOURCES))
    """resources are the container's requests and limits (a Kubernetes `ResourceRequirements`)."""
    affinity: KubeObject = Field(default_factory=lambda: _spread("operator"))
    """affinity is the pods' Kubernetes `Affinity`; the default prefers replicas on different
    nodes."""


class EkCaBundle(_Values):
    pem: str = Field(default="", max_length=1_000_000)
    """pem is the PEM text of the TPM vendors' EK root (and intermediate) CA certificates the
    verifier trusts; the chart stores it in the ConfigMap `configMapName`. Empty means the
    ConfigMap is yours to create (e.g. `kubectl create configmap … --from-file=ek-ca-bundle.pem`);
    until it exists the verifier pod waits."""
    config_map_name: str = Field(default="", max_length=253)
    """configMapName is the ConfigMap (in the release namespace) holding the bundle under the key
    `ek-ca-bundle.pem`. Empty means `<fullname>-ek-ca-bundle`. The verifier re-reads the file
    when the ConfigMap changes, so vendor CAs can be rotated without a restart."""


class NotificationsCaBundle(_Values):
    config_map_name: str = Field(default="", max_length=253)
    """configMapName is a ConfigMap (in the release namespace) with the PEM CA bundle the
    receiver's TLS certificate must chain to. Empty means the image's system trust store. TLS
    verification is always on."""
    key: str = Field(default="ca.crt", max_length=253)
    """key of the bundle in that ConfigMap."""


class Notifications(_Values):
    enabled: bool = False
    """enabled sends a CloudEvents 1.0 webhook (`dev.sod.trust.revoked` /
    `dev.sod.trust.restored`) on every trust loss and restoration, HMAC-SHA256-signed and retried
    with back-off (docs/ATTESTATION.md, "Revocation notices")."""
    url: str = Field(default="", pattern=r"^(https?://\S+)?$", max_length=2048)
    """url the notices are POSTed to (https, or http for a receiver inside the cluster)."""
    secret_name: str = Field(default="", max_length=253)
    """secretName is the Secret (in the release namespace) holding the HMAC key; required when
    enabled. Create it yourself, e.g. `kubectl create secret generic NAME
    --from-literal=hmac-key=$(openssl rand -hex 32)`."""
    secret_key: str = Field(default="hmac-key", max_length=253)
    """secretKey is the key of the HMAC key in that Secret."""
    timeout_seconds: Annotated[float, Field(ge=0.1, le=60)] = 5
    """timeoutSeconds bounds one delivery attempt (`--notify-timeout`)."""
    ca_bundle: NotificationsCaBundle = Field(default_factory=NotificationsCaBundle)
    """caBundle the receiver's certificate must chain to."""


class Verifier(_Workload):
    enabled: bool = True
    """enabled deploys the verifier, the only component that may label nodes. Without it no node
    is ever trusted and every SecureVM stays Pending."""
    replica_count: Annotated[int, Field(ge=0, le=10)] = 2
    """replicaCount is the number of verifier pods. Only the Lease holder judges nodes (two
    would issue competing nonces); the others keep warm caches and take over within
    `leaderElection.leaseDurationSeconds`, resuming from the NodeAttestations' status."""
    image: Image = Field(default_factory=lambda: Image(repository=OPERATOR_IMAGE))
    """image is the verifier image (by default the operator image, which contains
    `sod-verifier`)."""
    service_account: ServiceAccount = Field(default_factory=ServiceAccount)
    """serviceAccount of the verifier pods."""
    admission_policy: bool = True
    """admissionPolicy installs two ValidatingAdmissionPolicies: the verifier may change only the
    trust labels of nodes (`sod.node-restriction.kubernetes.io/…`), and nobody else (except
    `system:masters`) may set or remove those labels."""
    ek_ca_bundle: EkCaBundle = Field(default_factory=EkCaBundle)
    """ekCaBundle is the trust anchor of node identities: a node's TPM must present an EK
    certificate that chains to one of these CAs (`sod-verifier run --ek-ca-bundle`)."""
    leader_election: LeaderElection = Field(default_factory=LeaderElection)
    """leaderElection among the verifier replicas (`--lease-*`; the Lease is named
    `<fullname>-verifier`)."""
    pod_disruption_budget: PodDisruptionBudget = Field(default_factory=PodDisruptionBudget)
    """podDisruptionBudget of the verifier pods: a drain leaves one, so trust keeps being judged."""
    affinity: KubeObject = Field(default_factory=lambda: _spread("verifier"))
    """affinity is the pods' Kubernetes `Affinity`; the default prefers replicas on different
    nodes."""
    ready_max_age_seconds: Annotated[int, Field(ge=1, le=86400)] = 120
    """readyMaxAgeSeconds is the age after which a node's newest valid evidence no longer counts as
    Ready (`--ready-max-age`); each profile also has its own freshnessSeconds."""
    resync_seconds: Annotated[float, Field(ge=1, le=86400)] = 60
    """resyncSeconds is the time between two full resyncs of the verifier's caches
    (`--resync`)."""
    challenge_interval_seconds: Annotated[float, Field(ge=1, le=3600)] = 10
    """challengeIntervalSeconds is how often the verifier publishes a new nonce for every node
    (`--challenge-interval`), in the ConfigMap `<fullname>-attestation-challenges` the
    node-agents read; each agent answers each new nonce once, so this paces the rounds. Keep it
    well below the profiles' freshnessSeconds: evidence is as old as the nonce it answers."""
    workers: Annotated[int, Field(ge=1, le=64)] = 4
    """workers is how many nodes the verifier reconciles at once (`--workers`); a reconcile
    mostly waits on its status write, so a few overlap those round trips."""
    liveness_probe: Probe = Field(default_factory=lambda: Probe(initial_delay_seconds=10))
    """livenessProbe (`/healthz` on the metrics port: the worker and watches are alive) restarts a
    verifier that stopped."""
    readiness_probe: Probe = Field(default_factory=Probe)
    """readinessProbe (`/readyz` on the metrics port) marks the verifier ready once its caches
    are synced (standbys too: they are ready to take over)."""
    resources: KubeObject = Field(default_factory=lambda: dict(_VERIFIER_RESOURCES))
    """resources are the container's requests and limits (a Kubernetes `ResourceRequirements`)."""
    notifications: Notifications = Field(default_factory=Notifications)
    """notifications is the optional trust webhook for the people who must act (off by
    default)."""


class Tpm(_Values):
    device_path: str = Field(default="/dev/tpmrm0", pattern=r"^/dev/[A-Za-z0-9._/-]+$")
    """devicePath is the host's TPM 2.0 device. `/dev/tpmrm0` is the kernel's resource manager,
    which lets the agent share the TPM with other users on the host."""
    resource_name: str = Field(default="", max_length=253)
    """resourceName is an extended resource advertised by a device plugin that exposes the TPM
    (e.g. `squat.ai/tpmrm` from generic-device-plugin). When set, the agent requests one unit of
    it instead of mounting the device from the host, and runs unprivileged. Empty means mount
    `devicePath` as a hostPath character device, which needs a privileged container (the device
    cgroup allows only the devices a container was given)."""
    tcti: str = Field(default="", max_length=512)
    """tcti is, when set, the agent's TPM connection instead of the device (`sod-node-agent
    --tcti`), e.g. `swtpm:path=/run/sod-swtpm/swtpm.sock` for a software TPM on nodes without one
    (kind, labs; mount its directory with `nodeAgent.extraVolumes`). Nothing is mounted from
    `devicePath` and the agent runs unprivileged. A software TPM proves nothing about the host:
    never use one in production."""


class NodeAgent(_Workload):
    enabled: bool = True
    """enabled deploys the node-agent DaemonSet, which writes each node's evidence into the
    NodeAttestation named like the node. It can never label nodes."""
    image: Image = Field(default_factory=lambda: Image(repository=NODE_AGENT_IMAGE))
    """image is the node-agent image."""
    service_account: ServiceAccount = Field(default_factory=ServiceAccount)
    """serviceAccount of the node-agent pods."""
    tpm: Tpm = Field(default_factory=Tpm)
    """tpm says how the agent reaches the node's TPM."""
    pcrs: str = Field(default="sha256:0-7", pattern=r"^[a-z0-9]+:[0-9,-]+$", max_length=64)
    """pcrs is the PCR selection the agent quotes (`sod-node-agent --pcrs`), e.g. `sha256:0-7` or
    `sha256:0,4,7`. It must cover the PCRs your profiles' golden values name."""
    interval_seconds: Annotated[float, Field(ge=1, le=3600)] = 10
    """intervalSeconds is the least time between two answers of the agent to the verifier's nonces
    (`sod-node-agent --interval`); the verifier publishes one every
    `verifier.challengeIntervalSeconds`, and a change of the node's claims is answered at once."""
    architecture: str = Field(default="", max_length=253)
    """architecture is a security architecture every node of this DaemonSet declares by
    configuration (`sod-node-agent --architecture`), for hardware the agent cannot detect. Only a
    claim: the verifier still decides. Empty means detect only."""
    run_as_user: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    """runAsUser is the agent's user id. The TPM device is usually owned by root or the `tss`
    group; to run as non-root set a non-zero id and add your hosts' `tss` group id to
    `supplementalGroups`."""
    supplemental_groups: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
        default_factory=list
    )
    """supplementalGroups are extra group ids of the agent (e.g. the hosts' `tss` group)."""
    admission_policy: bool = True
    """admissionPolicy installs a ValidatingAdmissionPolicy that lets each agent write only the
    NodeAttestation named like the node its pod runs on (from the node name bound into its
    service-account token). Without it a compromised node could overwrite another node's
    evidence (the verifier would still reject evidence it cannot verify)."""
    extra_volumes: list[KubeObject] = Field(default_factory=list)
    """extraVolumes are added to the agent pods (Kubernetes `Volume` objects), e.g. the hostPath
    directory of a software TPM's socket."""
    extra_volume_mounts: list[KubeObject] = Field(default_factory=list)
    """extraVolumeMounts are added to the agent container (Kubernetes `VolumeMount` objects)."""
    max_unavailable: Annotated[int, Field(ge=1, le=1000)] = 1
    """maxUnavailable is how many agents a rolling update may restart at once."""
    resources: KubeObject = Field(default_factory=lambda: dict(_AGENT_RESOURCES))
    """resources are the container's requests and limits (a Kubernetes `ResourceRequirements`)."""
    tolerations: list[KubeObject] = Field(default_factory=lambda: [{"operator": "Exists"}])
    """tolerations let the agent run on tainted nodes; the default tolerates every taint, so every
    node that can run a VM can be attested."""


class ServiceMonitor(_Values):
    enabled: bool = False
    """enabled creates a prometheus-operator ServiceMonitor for the operator and verifier metrics
    (needs the monitoring.coreos.com CRDs)."""
    namespace: str = Field(default="", max_length=63)
    """namespace of the ServiceMonitor. Empty means the release namespace."""
    interval: PromDuration = "30s"
    """interval between scrapes."""
    scrape_timeout: PromDuration = "10s"
    """scrapeTimeout of one scrape; must not exceed `interval`."""
    labels: LabelMap = Field(default_factory=dict)
    """labels are added to the ServiceMonitor (e.g. the `release` label your Prometheus selects)."""


class PrometheusRule(_Values):
    enabled: bool = False
    """enabled creates a prometheus-operator PrometheusRule with alerts for non-compliant,
    pending and unsatisfiable SecureVMs, failing relocations, revoked nodes, rejected evidence,
    overdue evidence, failing trust webhook deliveries, a missing operator and no ready verifier
    (needs the monitoring.coreos.com CRDs)."""
    namespace: str = Field(default="", max_length=63)
    """namespace of the PrometheusRule. Empty means the release namespace."""
    labels: LabelMap = Field(default_factory=dict)
    """labels are added to the PrometheusRule (e.g. the `release` label your Prometheus selects)."""
    non_compliant_for: PromDuration = "5m"
    """nonCompliantFor is how long a SecureVM may run on a node that does not satisfy it before
    `SecureVMNonCompliant` fires (relocation normally takes seconds)."""
    pending_for: PromDuration = "15m"
    """pendingFor is how long a SecureVM may wait for a compliant node before `SecureVMPending`
    fires."""
    revocation_window: PromDuration = "15m"
    """revocationWindow is how far back `SodNodeTrustRevoked`, `SodEvidenceRejected` and
    `SodTrustNotificationsFailing` look: they fire while a node lost a verified profile, evidence
    was rejected, or a trust webhook notice was given up or dropped, within it."""
    evidence_overdue_for: PromDuration = "5m"
    """evidenceOverdueFor is how long some node's newest evidence may stay older than its
    profile's freshness bound before `SodEvidenceOverdue` fires (its agent stopped answering)."""
    verifier_not_ready_for: PromDuration = "5m"
    """verifierNotReadyFor is how long no verifier replica may be ready before
    `SodVerifierDown` fires."""


class Metrics(_Values):
    enabled: bool = True
    """enabled serves Prometheus metrics from the operator and the verifier and creates a metrics
    Service for each."""
    port: Port = 9090
    """port of the metrics endpoint (`/metrics`) in the operator and verifier containers."""
    service_monitor: ServiceMonitor = Field(default_factory=ServiceMonitor)
    """serviceMonitor for prometheus-operator."""
    prometheus_rule: PrometheusRule = Field(default_factory=PrometheusRule)
    """prometheusRule with the chart's alerts."""


class ChartValues(_Values):
    """Values of the sod-operator Helm chart."""

    name_override: str = Field(default="", max_length=63)
    """nameOverride replaces the chart name in object names."""
    fullname_override: str = Field(default="", max_length=63)
    """fullnameOverride replaces `<release>-<chart>` in object names."""
    global_: Global = Field(default_factory=Global, alias="global")
    """global values, shared with parent charts."""
    crds: Crds = Field(default_factory=Crds)
    """crds controls the CustomResourceDefinitions."""
    rbac: Rbac = Field(default_factory=Rbac)
    """rbac controls the least-privilege roles of each component and the tenants' roles."""
    operator: Operator = Field(default_factory=Operator)
    """operator is the SecureVM controller: places VMs on compliant nodes and migrates them."""
    verifier: Verifier = Field(default_factory=Verifier)
    """verifier checks the nodes' evidence and labels the nodes it verified."""
    node_agent: NodeAgent = Field(default_factory=NodeAgent)
    """nodeAgent collects each node's evidence (TPM quotes, hardware facts)."""
    metrics: Metrics = Field(default_factory=Metrics)
    """metrics for Prometheus."""


# --- rendering ---------------------------------------------------------------------------------

_SCHEMA_DROP = ("title",)


def _clean(node: Any) -> Any:
    """Drop pydantic's `title` keyword (not a property named `title`) and join wrapped lines."""
    if isinstance(node, list):
        return [_clean(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SCHEMA_DROP:
            continue
        if key in ("properties", "$defs"):
            out[key] = {name: _clean(sub) for name, sub in value.items()}
        elif key == "description" and isinstance(value, str):
            out[key] = " ".join(value.split())
        else:
            out[key] = _clean(value)
    return out


def values_schema() -> dict[str, Any]:
    """The chart's `values.schema.json` (JSON Schema 2020-12, unknown keys rejected)."""
    raw = ChartValues.model_json_schema(by_alias=True, mode="validation")
    cleaned: dict[str, Any] = _clean(raw)
    return {"$schema": SCHEMA_DIALECT} | cleaned


def render_values_schema() -> str:
    return json.dumps(values_schema(), indent=2, ensure_ascii=False) + "\n"


VALUES_HEADER = (
    "# Default values of the sod-operator chart.\n"
    "# GENERATED by `python -m sod_codegen.crdgen --write` from\n"
    "# operator/sod_operator/api/chart_values.py (the docstrings are the comments below). Do not"
    " edit.\n"
)


def _comment(text: str, indent: str) -> list[str]:
    body = " ".join(text.split())
    width = max(40, 100 - len(indent) - 2)
    lines = textwrap.wrap(body, width=width, break_on_hyphens=False)
    return [f"{indent}# {line}" for line in lines]


def _scalar(value: Any) -> str:
    """A scalar (or empty collection) as YAML; strings double-quoted (Helm best practice)."""
    if isinstance(value, str):
        return json.dumps(value)
    # A one-element flow list renders the value exactly as YAML writes it inline.
    return yaml.safe_dump([value], default_flow_style=True).strip()[1:-1]


class _BlockDumper(yaml.SafeDumper):
    """Indents list items under their key, like the rest of the file."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _field_order(cls: type[BaseModel]) -> list[str]:
    """A component's own fields first (enabled, replicaCount, image …), then the shared pod
    fields in their base-class order; an overridden default keeps its base position."""
    inherited = {name for base in cls.__mro__[1:] for name in getattr(base, "model_fields", {})}
    own = [n for n in cls.model_fields if n not in inherited]
    return own + [n for n in cls.model_fields if n in inherited]


def _emit(model: BaseModel, indent: str) -> list[str]:
    lines: list[str] = []
    fields: dict[str, FieldInfo] = type(model).model_fields
    dumped = model.model_dump(by_alias=True, mode="json")
    for name in _field_order(type(model)):
        info = fields[name]
        key = info.alias or name
        value = getattr(model, name)
        if lines and not indent:
            lines.append("")
        lines += _comment(info.description or "", indent)
        if isinstance(value, BaseModel):
            lines.append(f"{indent}{key}:")
            lines += _emit(value, indent + "  ")
            continue
        plain = dumped[key]
        if isinstance(plain, dict | list) and plain:
            block = yaml.dump(
                plain, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False, width=100
            )
            lines.append(f"{indent}{key}:")
            lines += [f"{indent}  {line}" for line in block.rstrip("\n").split("\n")]
        else:
            lines.append(f"{indent}{key}: {_scalar(plain)}")
    return lines


def render_values_yaml() -> str:
    return VALUES_HEADER + "\n" + "\n".join(_emit(ChartValues(), "")) + "\n"

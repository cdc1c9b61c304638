"""What the operator observes, reduced to value objects: the one module that decodes bodies.

Every Kubernetes object the operator watches is decoded here (nodes, profiles, packages,
SecureVMs, VMs, VMIs, migrations), so the planner never spelunks raw dicts and tests build the
world declaratively. KubeVirt's objects decode purely and totally (a field KubeVirt did not set
is `None`); only the fields relocation needs are read (`../shared/notes/kubevirt.md` §1.1-1.3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from sod_operator.api.constants import ANNOTATION_PREFIX, SECUREVM_LABEL
from sod_operator.api.v1alpha1.nodeattestation import (
    RENEWALS_KEY,
    Renewal,
    RenewalList,
    renewed_expiry,
)
from sod_operator.api.v1alpha1.parsing import ManifestError, first_error, parse_model
from sod_operator.api.v1alpha1.profile import ServerSecurityProfileSpec
from sod_operator.api.v1alpha1.securevm import SecureVMSpec, SecureVMStatus
from sod_operator.api.v1alpha1.security import SecurityPackageSpec
from sod_operator.policy.placement import (
    NO_CONSTRAINTS,
    LauncherConstraints,
    NodeView,
    blocking_taints,
)
from sod_operator.policy.vmsettings import NONE, VMSettings, carried

Json = dict[str, Any]

TRIGGER_LABEL = f"{ANNOTATION_PREFIX}trigger"
"""Label on our migrations: why it was created (a `RelocationTrigger`)."""
TEMPLATE_HASH_ANNOTATION = f"{ANNOTATION_PREFIX}template-hash"
"""Annotation on a VM created from `spec.template`: the hash of the template last applied."""
STOPPED_ANNOTATION = f"{ANNOTATION_PREFIX}fail-closed-stopped"
"""Annotation on a VM stopped by the fail-closed policy: the run strategy to restore."""

NODE_NAME_LABEL = "kubevirt.io/nodeName"
"""KubeVirt's reserved label on a VMI: the node it runs on (virt-api refuses it to others)."""
LAUNCHER_LABEL = "kubevirt.io"
LAUNCHER_VALUE = "virt-launcher"
CREATED_BY_LABEL = "kubevirt.io/created-by"
"""On a virt-launcher pod: the uid of the VMI it runs."""

FINAL_MIGRATION_PHASES = frozenset({"Succeeded", "Failed"})
FINAL_POD_PHASES = frozenset({"Succeeded", "Failed"})
RUNNING_VMI_PHASES = frozenset({"Running"})


class Kind(StrEnum):
    """The kinds the operator watches."""

    NODE = "Node"
    PROFILE = "ServerSecurityProfile"
    PACKAGE = "SecurityPackage"
    SECUREVM = "SecureVM"
    VM = "VirtualMachine"
    VMI = "VirtualMachineInstance"
    MIGRATION = "VirtualMachineInstanceMigration"
    POD = "Pod"
    """virt-launcher pods only: where the scheduler bound each VMI (issue 19)."""
    ATTESTATION = "NodeAttestation"
    """Only its verdicts' expiry times: a verified profile is void once expired (issue 17)."""


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as Kubernetes writes it, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _dict(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def _condition(status: Json, ctype: str) -> Json | None:
    for cond in status.get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == ctype:
            return cond
    return None


def _str_map(value: Any) -> Mapping[str, str]:
    return {str(k): str(v) for k, v in _dict(value).items()}


def object_key(body: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name); the namespace is "" for cluster-scoped objects."""
    meta = _dict(body.get("metadata"))
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def resource_version(body: Mapping[str, Any]) -> int | None:
    """The object's resourceVersion as a number (the apiserver's are etcd revisions)."""
    try:
        return int(_dict(body.get("metadata")).get("resourceVersion", ""))
    except (TypeError, ValueError):
        return None


def generation(body: Mapping[str, Any]) -> int:
    return int(_dict(body.get("metadata")).get("generation") or 0)


# --------------------------------------------------------------------------------------------
# Nodes and the catalog


def node_from_body(body: Mapping[str, Any]) -> NodeView:
    meta, spec = _dict(body.get("metadata")), _dict(body.get("spec"))
    return NodeView(
        name=str(meta.get("name", "")),
        labels=_str_map(meta.get("labels")),
        schedulable=not spec.get("unschedulable"),
        taints=blocking_taints(spec.get("taints") or ()),
    )


@dataclass(frozen=True)
class VerifiedVerdicts:
    """What the operator keeps of a NodeAttestation: its `Verified` verdicts' expiry and
    evidence times, and the content digest of the recorded evidence (what a renewal must name).
    Never the whole body: a fleet's objects hold quotes and event logs."""

    expiries: Mapping[str, tuple[datetime, datetime | None]] = field(default_factory=dict)
    """profile → (`expiryTime`, `evidenceTime`)."""
    content_sha256: str | None = None
    """`status.evidence.contentSha256`."""


def verified_verdicts(body: Mapping[str, Any]) -> VerifiedVerdicts:
    """The `Verified` verdicts of a NodeAttestation's status (a verdict without an expiry time
    never expires here: the verifier always sets one)."""
    status = _dict(body.get("status"))
    out: dict[str, tuple[datetime, datetime | None]] = {}
    for verdict in status.get("verdicts") or ():
        if not isinstance(verdict, dict) or verdict.get("result") != "Verified":
            continue
        expiry = parse_time(verdict.get("expiryTime"))
        if expiry is not None and isinstance(verdict.get("profile"), str):
            out[verdict["profile"]] = (expiry, parse_time(verdict.get("evidenceTime")))
    digest = _dict(status.get("evidence")).get("contentSha256")
    return VerifiedVerdicts(out, digest if isinstance(digest, str) else None)


def effective_expiries(view: VerifiedVerdicts, renewal: Renewal | None) -> dict[str, datetime]:
    """profile → when its `Verified` verdict expires, moved later by the fleet renewal of the
    same recorded evidence (`renewed_expiry`; any other renewal changes nothing)."""
    return {
        profile: renewed_expiry(expiry, evidence_time, view.content_sha256, renewal)
        for profile, (expiry, evidence_time) in view.expiries.items()
    }


def verdict_expiries(
    body: Mapping[str, Any], renewal: Renewal | None = None
) -> dict[str, datetime]:
    """profile → effective expiry of each `Verified` verdict in a NodeAttestation's status."""
    return effective_expiries(verified_verdicts(body), renewal)


def renewals_from_configmap(body: Mapping[str, Any] | None) -> RenewalList:
    """The fleet's renewals published in the verifier's ConfigMap (`RENEWALS_KEY`); none when
    the ConfigMap or its key is missing (then status expiries alone count: fail closed).
    Raises `ManifestError` when the data does not parse."""
    path = f"data.{RENEWALS_KEY}"
    data = _dict(_dict(body).get("data")).get(RENEWALS_KEY)
    if data is None:
        return RenewalList()
    if not isinstance(data, str):
        raise ManifestError(path, "not a string")
    try:
        out = RenewalList.model_validate_json(data, by_alias=True)
    except ValidationError as err:
        raise first_error(err, path) from None
    for node, renewal in out.renewals.items():
        if renewal.evidence_time.tzinfo is None:  # would not compare with the status's times
            raise ManifestError(f"{path}.renewals.{node}.evidenceTime", "no time zone")
    return out


def profile_from_body(body: Mapping[str, Any]) -> ServerSecurityProfileSpec:
    """The profile's spec; raises `ManifestError` when it does not parse."""
    return parse_model(ServerSecurityProfileSpec, body.get("spec"), "spec")


def package_from_body(body: Mapping[str, Any]) -> SecurityPackageSpec:
    """The package's spec; raises `ManifestError` when it does not parse."""
    return parse_model(SecurityPackageSpec, body.get("spec"), "spec")


# --------------------------------------------------------------------------------------------
# SecureVMs


@dataclass(frozen=True)
class SecureVMView:
    """A SecureVM as the planner sees it. `spec` is None when it failed to parse."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: SecureVMSpec | None
    status: SecureVMStatus
    spec_error: str = ""
    created: datetime | None = None
    """metadata.creationTimestamp: which of several SecureVMs claiming one VM owns it."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def vm_name(self) -> str:
        if self.spec is not None and self.spec.vm_ref is not None:
            return self.spec.vm_ref.name
        return self.name


def securevm_from_body(body: Mapping[str, Any]) -> SecureVMView:
    """Parse a SecureVM object; a spec that does not parse becomes `spec=None` with the error."""
    meta = _dict(body.get("metadata"))
    spec: SecureVMSpec | None
    try:
        spec = parse_model(SecureVMSpec, body.get("spec"), "spec")
        error = ""
    except ManifestError as err:
        spec, error = None, str(err)
    try:
        status = SecureVMStatus.model_validate(body.get("status") or {}, by_alias=True)
    except ValidationError:
        status = SecureVMStatus()  # a status we cannot read is recomputed from scratch
    return SecureVMView(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=generation(body),
        spec=spec,
        status=status,
        spec_error=error,
        created=parse_time(meta.get("creationTimestamp")),
    )


# --------------------------------------------------------------------------------------------
# KubeVirt


@dataclass(frozen=True)
class VMView:
    """A KubeVirt VirtualMachine as relocation sees it."""

    namespace: str
    name: str
    uid: str = ""
    template_affinity: Json | None = None
    run_strategy: str = "Always"
    restart_required: bool = False
    owner_uids: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    resource_version: str = ""
    launcher: LauncherConstraints = NO_CONSTRAINTS
    """The template's nodeSelector and tolerations: where its launcher pod can go at all."""
    vm_settings: VMSettings = NONE
    """The confidential-VM settings its template carries (launchSecurity, firmware)."""

    @property
    def securevm(self) -> str | None:
        """The SecureVM that manages this VM, by our label."""
        return self.labels.get(SECUREVM_LABEL)

    @property
    def template_hash(self) -> str | None:
        return self.annotations.get(TEMPLATE_HASH_ANNOTATION)

    @property
    def stopped_by_fail_closed(self) -> str | None:
        """The run strategy to restore when the fail-closed policy stopped this VM."""
        return self.annotations.get(STOPPED_ANNOTATION)


def vmi_template_spec(vm_spec: Mapping[str, Any] | None) -> Json:
    """`template.spec` of a VirtualMachineSpec (a VM's, or a SecureVM's `spec.template`)."""
    vmi_template = _dict(_dict(vm_spec).get("template") if vm_spec else None)
    return _dict(vmi_template.get("spec"))


def vm_spec_affinity(vm_spec: Mapping[str, Any] | None) -> Json | None:
    """`template.spec.affinity` of a VirtualMachineSpec."""
    return _dict(vmi_template_spec(vm_spec).get("affinity")) or None


def vm_from_body(body: Mapping[str, Any]) -> VMView:
    meta, spec, status = (
        _dict(body.get("metadata")),
        _dict(body.get("spec")),
        _dict(body.get("status")),
    )
    run_strategy = spec.get("runStrategy")
    if not isinstance(run_strategy, str):
        # The deprecated `spec.running` boolean maps onto the two strategies it stood for.
        run_strategy = "Always" if spec.get("running") else "Halted"
    vmi_spec = vmi_template_spec(spec)
    affinity = _dict(vmi_spec.get("affinity")) or None
    restart = _condition(status, "RestartRequired")
    return VMView(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        template_affinity=affinity,
        run_strategy=run_strategy,
        restart_required=bool(restart and restart.get("status") == "True"),
        owner_uids=frozenset(
            str(o.get("uid")) for o in meta.get("ownerReferences") or [] if isinstance(o, dict)
        ),
        labels=_str_map(meta.get("labels")),
        annotations=_str_map(meta.get("annotations")),
        resource_version=str(meta.get("resourceVersion", "")),
        launcher=LauncherConstraints.from_vmi_spec(vmi_spec),
        vm_settings=carried(vmi_spec),
    )


@dataclass(frozen=True)
class MigrationState:
    """`status.migrationState` of a VMI (or a VMIM): the migration KubeVirt is running."""

    migration_uid: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    source_node: str = ""
    target_node: str = ""
    completed: bool = False
    failed: bool = False
    failure_reason: str = ""

    @property
    def in_progress(self) -> bool:
        return not (self.completed or self.failed or self.end_time is not None)


def migration_state_from(value: Any) -> MigrationState | None:
    state = _dict(value)
    if not state:
        return None
    return MigrationState(
        migration_uid=str(state.get("migrationUid", "")),
        start_time=parse_time(state.get("startTimestamp")),
        end_time=parse_time(state.get("endTimestamp")),
        source_node=str(state.get("sourceNode", "")),
        target_node=str(state.get("targetNode", "")),
        completed=bool(state.get("completed")),
        failed=bool(state.get("failed")),
        failure_reason=str(state.get("failureReason", "")),
    )


@dataclass(frozen=True)
class VMIView:
    """A running (or starting) VirtualMachineInstance."""

    namespace: str
    name: str
    uid: str = ""
    phase: str = ""
    node_name: str | None = None
    """Where the VM runs, from what a tenant cannot write: KubeVirt's `kubevirt.io/nodeName`
    label, confirmed by the launcher pods (`confirm_placement`)."""
    affinity: Json | None = None
    live_migratable: bool | None = None
    """False when KubeVirt says the VMI cannot be live-migrated; None when it has not said."""
    not_migratable_reason: str = ""
    not_migratable_message: str = ""
    migration: MigrationState | None = None
    evacuation_node: str | None = None
    reported_node: str | None = None
    """`status.nodeName`: VMIs have no status subresource, so KubeVirt's `edit` role lets the
    tenant write it (issue 19). Compared, never believed."""
    node_conflict: str = ""
    """Why the sources of `node_name` disagree (empty when they agree): never Compliant."""
    vm_settings: VMSettings = NONE
    """The confidential-VM settings the instance was launched with (its own spec)."""
    cpu_model: str = ""
    """`spec.domain.cpu.model` (virt-api defaults it to `host-model`)."""

    @property
    def running(self) -> bool:
        return self.phase in RUNNING_VMI_PHASES and bool(self.node_name)

    @property
    def migrating(self) -> bool:
        """A migration is under way (KubeVirt refuses affinity updates meanwhile)."""
        return (self.migration is not None and self.migration.in_progress) or bool(
            self.evacuation_node
        )


def vmi_from_body(body: Mapping[str, Any]) -> VMIView:
    meta, spec, status = (
        _dict(body.get("metadata")),
        _dict(body.get("spec")),
        _dict(body.get("status")),
    )
    lm = _condition(status, "LiveMigratable")
    live: bool | None = None
    if lm is not None:
        live = lm.get("status") != "False"
    return VMIView(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        phase=str(status.get("phase", "")),
        node_name=_str_map(meta.get("labels")).get(NODE_NAME_LABEL) or None,
        reported_node=str(status["nodeName"]) if status.get("nodeName") else None,
        affinity=_dict(spec.get("affinity")) or None,
        vm_settings=carried(spec),
        live_migratable=live,
        not_migratable_reason=str((lm or {}).get("reason", "")) if live is False else "",
        not_migratable_message=str((lm or {}).get("message", "")) if live is False else "",
        migration=migration_state_from(status.get("migrationState")),
        evacuation_node=str(status["evacuationNodeName"])
        if status.get("evacuationNodeName")
        else None,
        cpu_model=str(_dict(_dict(spec.get("domain")).get("cpu")).get("model") or ""),
    )


@dataclass(frozen=True)
class LauncherPod:
    """A virt-launcher pod: which VMI (by uid) it runs, on which node the scheduler bound it."""

    namespace: str
    name: str
    vmi_uid: str
    node_name: str
    active: bool
    """Not Succeeded/Failed (a migration's source pod turns Succeeded once the target runs)."""


def launcher_pod_from_body(body: Mapping[str, Any]) -> LauncherPod | None:
    """A launcher pod, or None for any other pod (or one not bound to a node yet)."""
    meta, spec, status = (
        _dict(body.get("metadata")),
        _dict(body.get("spec")),
        _dict(body.get("status")),
    )
    labels = _str_map(meta.get("labels"))
    if labels.get(LAUNCHER_LABEL) != LAUNCHER_VALUE or not labels.get(CREATED_BY_LABEL):
        return None
    return LauncherPod(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        vmi_uid=labels[CREATED_BY_LABEL],
        node_name=str(spec.get("nodeName") or ""),
        active=str(status.get("phase", "")) not in FINAL_POD_PHASES,
    )


def confirm_placement(vmi: VMIView, pod_nodes: frozenset[str]) -> VMIView:
    """The VMI with `node_name` from what a tenant cannot write, and any disagreement named.

    `pod_nodes`: nodes of the VMI's active launcher pods. The label must name one of them (a
    second pod is a migration's source or target) and `status.nodeName` must equal the label.
    Until a launcher pod is seen the VMI counts as not yet scheduled (a watch race must not
    look like a lie). On disagreement the node is the label's when a pod confirms it, else the
    only pod's: the VMI is never Compliant while `node_conflict` is set.
    """
    label, reported = vmi.node_name, vmi.reported_node
    if label is None and reported is None:
        return vmi
    if not pod_nodes:
        return replace(vmi, node_name=None)
    problems = []
    if reported != label:
        problems.append(
            f"status.nodeName says {reported or '(none)'} but KubeVirt's "
            f"{NODE_NAME_LABEL} label says {label or '(none)'}"
        )
    if label not in pod_nodes:
        problems.append(
            f"the {NODE_NAME_LABEL} label says {label or '(none)'} but the launcher pod runs on "
            f"{', '.join(sorted(pod_nodes))}"
        )
    if not problems:
        return vmi
    node = (
        label if label in pod_nodes else (next(iter(pod_nodes)) if len(pod_nodes) == 1 else label)
    )
    return replace(vmi, node_name=node, node_conflict="; ".join(problems))


@dataclass(frozen=True)
class MigrationView:
    """A VirtualMachineInstanceMigration (ours or anyone's)."""

    namespace: str
    name: str
    vmi_name: str
    uid: str = ""
    phase: str = ""
    created: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    state: MigrationState | None = None

    @property
    def final(self) -> bool:
        return self.phase in FINAL_MIGRATION_PHASES

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded"

    @property
    def securevm(self) -> str | None:
        return self.labels.get(SECUREVM_LABEL)

    @property
    def trigger(self) -> str | None:
        return self.labels.get(TRIGGER_LABEL)

    @property
    def target_node(self) -> str:
        return self.state.target_node if self.state else ""

    @property
    def failure_reason(self) -> str:
        return self.state.failure_reason if self.state else ""


def migration_from_body(body: Mapping[str, Any]) -> MigrationView:
    meta, spec, status = (
        _dict(body.get("metadata")),
        _dict(body.get("spec")),
        _dict(body.get("status")),
    )
    return MigrationView(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        vmi_name=str(spec.get("vmiName", "")),
        uid=str(meta.get("uid", "")),
        phase=str(status.get("phase", "")),
        created=parse_time(meta.get("creationTimestamp")),
        labels=_str_map(meta.get("labels")),
        state=migration_state_from(status.get("migrationState")),
    )

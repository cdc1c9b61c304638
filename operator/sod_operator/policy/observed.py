"""What the operator observes of KubeVirt: VMs, VMIs and migrations, reduced to value objects.

Parsing is pure and total (a field KubeVirt did not set is `None`), so the planner never
spelunks raw dicts and tests build the world declaratively. Only the fields relocation needs
are read; see `../shared/notes/kubevirt.md` §1.1-1.3 for their meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sod_operator.api.constants import ANNOTATION_PREFIX, SECUREVM_LABEL
from sod_operator.policy.placement import NO_CONSTRAINTS, LauncherConstraints

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
    vmi_spec = _dict(_dict(spec.get("template")).get("spec"))
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
        live_migratable=live,
        not_migratable_reason=str((lm or {}).get("reason", "")) if live is False else "",
        not_migratable_message=str((lm or {}).get("message", "")) if live is False else "",
        migration=migration_state_from(status.get("migrationState")),
        evacuation_node=str(status["evacuationNodeName"])
        if status.get("evacuationNodeName")
        else None,
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

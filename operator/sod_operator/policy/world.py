"""The operator's in-memory world and the indexes that keep per-event work proportional to
the SecureVMs affected, never to the fleet.

Every `apply_*` method takes one observed object (or its deletion) and returns the keys of the
SecureVMs whose plan may change because of it:

* a node's verified profiles change → the SecureVMs whose VMI runs there (index node → SecureVMs
  via the VMI's `nodeName`), plus, when it gained a profile, the SecureVMs starved of nodes;
* a profile is added, changed or deleted → only the SecureVMs whose request's satisfying set or
  cost preferences change (evaluated once per distinct request, not per SecureVM);
* a package changes → the SecureVMs naming it;
* a VM, VMI, migration or virt-launcher pod changes → the SecureVM that manages it.

Where a VM runs is never taken from the VMI's `status.nodeName` alone (a tenant can write it):
`observation` confirms it against KubeVirt's `kubevirt.io/nodeName` label and the nodes the
scheduler bound the VMI's launcher pods to (`observed.confirm_placement`), and the node index
holds every node any of them names, so a revocation on any of them wakes the SecureVM.

One VM, one owner: every SecureVM naming a VM (its own name for `spec.template`, or
`spec.vmRef.name`) is a *claimant*, and all are kept (`_claimants`). Exactly one owns the VM
(`owner_of`), decided in this order, so that no later claim can take over what a SecureVM
already manages:

1. the claimant the VM names in an ownerReference (a VM the operator made from a template);
2. the claimant the VM names in its `sod.dev/securevm` label (a VM the operator adopted);
3. otherwise the oldest claimant whose spec parses (`metadata.creationTimestamp`, then uid).

The others report VirtualMachineConflict and never act on the VM; removing any claimant never
drops the owner (before, one entry per VM name was kept and the last claimant overwrote it:
a second SecureVM naming the VM silenced the first, issue 19).

Pure data structures (no I/O); the clock is passed in where it matters.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sod_operator.api.v1alpha1.profile import ServerSecurityProfileSpec
from sod_operator.api.v1alpha1.securevm import RelocationTrigger
from sod_operator.api.v1alpha1.security import SecurityPackageSpec
from sod_operator.policy.evaluation import Resolution, evaluate, request_key
from sod_operator.policy.fleet import InFlight
from sod_operator.policy.matching import ProfileCapabilities
from sod_operator.policy.observed import (
    LauncherPod,
    MigrationView,
    VMIView,
    VMView,
    confirm_placement,
)
from sod_operator.policy.placement import NodeView, blocking_taints, cost_preferences
from sod_operator.policy.plan import NodeSnapshot, Observation, SecureVMView
from sod_operator.policy.request import RequestError, SecurityRequest, resolve_request

Key = tuple[str, str]
ResolutionKey = tuple[object, ...]


@dataclass(frozen=True)
class _Resolved:
    request: SecurityRequest | None
    error: RequestError | None

    @property
    def key(self) -> ResolutionKey | None:
        if self.request is None:
            return None
        return (*request_key(self.request), self.request.package)


class World:
    """Everything the operator knows, indexed for the questions events ask."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeView] = {}
        self.by_profile: defaultdict[str, set[str]] = defaultdict(set)
        self.revoked_at: dict[str, datetime] = {}
        self.load: Counter[str] = Counter()
        self.profiles: dict[str, ProfileCapabilities] = {}
        self.packages: dict[str, SecurityPackageSpec] = {}
        self.svms: dict[Key, SecureVMView] = {}
        self.vms: dict[Key, VMView] = {}
        self.vmis: dict[Key, VMIView] = {}
        self.migrations: dict[Key, MigrationView] = {}
        self._migrations_by_vmi: defaultdict[Key, set[str]] = defaultdict(set)
        self.active_migrations: set[Key] = set()
        """Migrations not yet Succeeded or Failed (what counts against KubeVirt's limits)."""
        self._claimants: defaultdict[Key, set[Key]] = defaultdict(set)
        """VM → every SecureVM naming it (see `owner_of`)."""
        self.launchers: dict[Key, LauncherPod] = {}
        """Active virt-launcher pods bound to a node, by (namespace, pod name)."""
        self._launchers_by_vmi: defaultdict[Key, set[str]] = defaultdict(set)
        """(namespace, VMI uid) → its active launcher pods' names."""
        self._vmi_by_uid: dict[Key, str] = {}
        """(namespace, VMI uid) → VMI name."""
        self._indexed_nodes: dict[Key, set[str]] = {}
        """VM → the nodes `_svms_on_node` lists its claimants under."""
        self._svms_on_node: defaultdict[str, set[Key]] = defaultdict(set)
        self._svms_by_package: defaultdict[str, set[Key]] = defaultdict(set)
        self._svms_by_resolution: defaultdict[ResolutionKey, set[Key]] = defaultdict(set)
        self._resolved: dict[Key, _Resolved] = {}
        self._cache: dict[ResolutionKey, Resolution] = {}
        self.vm_rejections: dict[Key, tuple[str, int, str]] = {}
        """SecureVM → (uid, generation, the apiserver's message) of a refused VM create."""
        self.starved: set[Key] = set()
        """SecureVMs whose last plan found no compliant node: woken when a node gains trust."""
        self.migration_refusals: dict[Key, tuple[str, str, str]] = {}
        """SecureVM → (uid, migration name, virt-api's message) of a migration create refused at
        admission (the planner closes the attempt as failed and backs off)."""
        self.expiry: dict[str, dict[str, datetime]] = {}
        """node → profile → expiry of its `Verified` verdict (NodeAttestation status)."""

    # ---------------------------------------------------------------- nodes

    def apply_node(
        self,
        name: str,
        labels: dict[str, str] | None,
        schedulable: bool,
        now: datetime,
        taints: Iterable[dict[str, object]] = (),
    ) -> set[Key]:
        """A node was added, changed (`labels` set) or deleted (`labels` None)."""
        old = self.nodes.get(name)
        before = old.verified if old else frozenset()
        if labels is None:
            self.nodes.pop(name, None)
            after: frozenset[str] = frozenset()
        else:
            node = NodeView(name, dict(labels), schedulable, blocking_taints(taints))
            self.nodes[name] = node
            after = node.verified
        lost, gained = before - after, after - before
        for p in lost:
            self.by_profile[p].discard(name)
        for p in gained:
            self.by_profile[p].add(name)
        if lost:
            self.revoked_at[name] = now
        affected: set[Key] = set()
        new = self.nodes.get(name)
        placeable_changed = old is not None and (
            old.schedulable != schedulable or (new is not None and old.taints != new.taints)
        )
        if lost or gained or placeable_changed:
            affected |= self._svms_on_node.get(name, set())
        if gained or placeable_changed:
            affected |= self.starved
        return affected

    def apply_attestation(
        self, name: str, expiries: dict[str, datetime] | None, now: datetime
    ) -> set[Key]:
        """A NodeAttestation's verdict expiries changed (`None`: deleted).

        A renewal that leaves every profile as valid at `now` as before wakes nobody (a SecureVM
        on the node already wakes at the expiry it planned with, and sees the renewal then);
        a profile becoming void or valid again at `now` wakes the SecureVMs on the node and, when
        one became valid, the starved ones. An expiry moved earlier (a fleet renewal withdrawn)
        wakes the SecureVMs on the node too: they would wake only at the later one."""
        old = self.expiry.get(name, {})
        new = expiries or {}
        if new:
            self.expiry[name] = dict(new)
        else:
            self.expiry.pop(name, None)
        before = {p for p, t in old.items() if t <= now}
        after = {p for p, t in new.items() if t <= now}
        revived = before - after
        earlier = any(p in old and t < old[p] for p, t in new.items())
        if not revived and after <= before and not earlier:
            return set()
        affected = set(self._svms_on_node.get(name, set()))
        if revived:
            affected |= self.starved
        return affected

    # ---------------------------------------------------------------- catalog

    def _fingerprints(self) -> dict[ResolutionKey, tuple[object, ...]]:
        out: dict[ResolutionKey, tuple[object, ...]] = {}
        for rkey in self._svms_by_resolution:
            res = self._cache.get(rkey)
            if res is not None:
                out[rkey] = _fingerprint(res, self.profiles.values())
        return out

    def apply_profile(self, name: str, spec: ServerSecurityProfileSpec | None) -> set[Key]:
        """A profile was added or changed (`spec` set) or deleted: only requests it changes."""
        before = self._fingerprints()
        if spec is None:
            self.profiles.pop(name, None)
        else:
            self.profiles[name] = ProfileCapabilities.from_spec(name, spec)
        self._cache.clear()
        affected: set[Key] = set()
        for rkey, keys in self._svms_by_resolution.items():
            if not keys:
                continue
            res = self._resolution_for(rkey, next(iter(keys)))
            if before.get(rkey) != _fingerprint(res, self.profiles.values()):
                affected |= keys
        return affected

    def apply_package(self, name: str, spec: SecurityPackageSpec | None) -> set[Key]:
        if spec is None:
            self.packages.pop(name, None)
        else:
            self.packages[name] = spec
        affected = set(self._svms_by_package.get(name, set()))
        for key in affected:
            self._resolve(key)
        return affected

    # ---------------------------------------------------------------- SecureVMs

    def apply_securevm(self, key: Key, view: SecureVMView | None) -> set[Key]:
        """Returns `key` (unless deleted) plus the other claimants of its VM(s) when the owner
        changed: the new owner acts, the old one reports the conflict."""
        old = self.svms.get(key)
        vms = {(key[0], v.vm_name) for v in (old, view) if v is not None}
        owners = {vm: self.owner_of(*vm) for vm in vms}
        if old is not None:
            self._unindex_svm(key, old)
        if view is None:
            self.svms.pop(key, None)
            self.starved.discard(key)
            self.migration_refusals.pop(key, None)
        else:
            self.svms[key] = view
            self._claimants[(key[0], view.vm_name)].add(key)
            self._reindex_nodes((key[0], view.vm_name))
            if view.spec is not None and view.spec.security.package:
                self._svms_by_package[view.spec.security.package].add(key)
            self._resolve(key)
        affected = {key} if view is not None else set()
        for vm, before in owners.items():
            if self.owner_of(*vm) != before:
                affected |= self._claimants.get(vm, set())
        return affected

    def update_status(self, key: Key, view: SecureVMView) -> None:
        """Our own status write: same spec, new status (indexes unchanged)."""
        if key in self.svms:
            self.svms[key] = view

    def _unindex_svm(self, key: Key, old: SecureVMView) -> None:
        vm = (key[0], old.vm_name)
        claimants = self._claimants.get(vm)
        if claimants is not None:
            claimants.discard(key)
            if not claimants:
                del self._claimants[vm]
        for node in self._indexed_nodes.get(vm, set()):
            self._svms_on_node[node].discard(key)
        if old.spec is not None and old.spec.security.package:
            self._svms_by_package[old.spec.security.package].discard(key)
        resolved = self._resolved.pop(key, None)
        if resolved is not None and resolved.key is not None:
            keys = self._svms_by_resolution.get(resolved.key)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._svms_by_resolution[resolved.key]

    def _resolve(self, key: Key) -> None:
        view = self.svms[key]
        old = self._resolved.get(key)
        if old is not None and old.key is not None:
            self._svms_by_resolution[old.key].discard(key)
        if view.spec is None:
            resolved = _Resolved(None, None)
        else:
            try:
                resolved = _Resolved(resolve_request(view.spec.security, self.packages), None)
            except RequestError as err:
                resolved = _Resolved(None, err)
        self._resolved[key] = resolved
        if resolved.key is not None:
            self._svms_by_resolution[resolved.key].add(key)

    def _resolution_for(self, rkey: ResolutionKey, any_key: Key) -> Resolution:
        cached = self._cache.get(rkey)
        if cached is None:
            request = self._resolved[any_key].request
            assert request is not None
            cached = evaluate(request, self.profiles.values())
            self._cache[rkey] = cached
        return cached

    def resolution(self, key: Key) -> Resolution:
        resolved = self._resolved.get(key)
        if resolved is None or resolved.request is None:
            return Resolution(request=None, error=resolved.error if resolved else None)
        rkey = resolved.key
        assert rkey is not None
        return self._resolution_for(rkey, key)

    # ---------------------------------------------------------------- KubeVirt objects

    def owner_of(self, namespace: str, vm_name: str) -> Key | None:
        """The one SecureVM that manages the VM (rules in the module docstring)."""
        claimants = self._claimants.get((namespace, vm_name))
        if not claimants:
            return None
        views = [self.svms[k] for k in claimants]
        return choose_owner(views, self.vms.get((namespace, vm_name))).key

    def securevm_for_vm(self, namespace: str, vm_name: str) -> Key | None:
        return self.owner_of(namespace, vm_name)

    def _owner_set(self, vm: Key) -> set[Key]:
        owner = self.owner_of(*vm)
        return {owner} if owner else set()

    def _vmi_nodes(self, namespace: str, vm_name: str) -> set[str]:
        """Every node the VMI's label, status or launcher pods name."""
        vmi = self.vmis.get((namespace, vm_name))
        if vmi is None:
            return set()
        nodes = {n for n in (vmi.node_name, vmi.reported_node) if n}
        return nodes | self._pod_nodes(namespace, vmi.uid)

    def _pod_nodes(self, namespace: str, vmi_uid: str) -> set[str]:
        names = self._launchers_by_vmi.get((namespace, vmi_uid), set())
        return {self.launchers[(namespace, n)].node_name for n in names}

    def _reindex_nodes(self, vm: Key) -> None:
        """Keep `_svms_on_node` in step with the nodes the VMI names."""
        claimants = self._claimants.get(vm, set())
        old = self._indexed_nodes.pop(vm, set())
        new = self._vmi_nodes(*vm)
        for node in old - new:
            self._svms_on_node[node].difference_update(claimants)
        for node in new:
            self._svms_on_node[node].update(claimants)
        if new:
            self._indexed_nodes[vm] = new

    def placed_vmi(self, vm: Key) -> VMIView | None:
        """The VMI with its node confirmed by KubeVirt's label and its launcher pods."""
        vmi = self.vmis.get(vm)
        if vmi is None:
            return None
        return confirm_placement(vmi, frozenset(self._pod_nodes(vm[0], vmi.uid)))

    def apply_launcher_pod(self, key: Key, view: LauncherPod | None) -> set[Key]:
        """A pod was added, changed or deleted; only launcher pods bound to a node are kept."""
        old = self.launchers.pop(key, None)
        if old is not None:
            self._launchers_by_vmi[(key[0], old.vmi_uid)].discard(key[1])
        if view is not None and view.active and view.node_name:
            self.launchers[key] = view
            self._launchers_by_vmi[(key[0], view.vmi_uid)].add(key[1])
        affected: set[Key] = set()
        for uid in {v.vmi_uid for v in (old, view) if v is not None}:
            if not self._launchers_by_vmi.get((key[0], uid)):
                self._launchers_by_vmi.pop((key[0], uid), None)
            name = self._vmi_by_uid.get((key[0], uid))
            if name is not None:
                self._reindex_nodes((key[0], name))
                affected |= self._owner_set((key[0], name))
        return affected

    def apply_vm(self, key: Key, view: VMView | None) -> set[Key]:
        """Every claimant: the VM's ownerReferences and label decide which one owns it."""
        if view is None:
            self.vms.pop(key, None)
        else:
            self.vms[key] = view
        return set(self._claimants.get(key, set()))

    def apply_vmi(self, key: Key, view: VMIView | None) -> set[Key]:
        old = self.vmis.get(key)
        old_node = old.node_name if old else None
        new_node = view.node_name if view else None
        if old_node != new_node:
            if old_node:
                self.load[old_node] -= 1
                if self.load[old_node] <= 0:
                    del self.load[old_node]
            if new_node:
                self.load[new_node] += 1
        if old is not None:
            self._vmi_by_uid.pop((key[0], old.uid), None)
        if view is None:
            self.vmis.pop(key, None)
        else:
            self.vmis[key] = view
            self._vmi_by_uid[(key[0], view.uid)] = key[1]
        self._reindex_nodes(key)
        return self._owner_set(key)

    def apply_migration(self, key: Key, view: MigrationView | None) -> set[Key]:
        old = self.migrations.get(key)
        vmi_name = view.vmi_name if view else (old.vmi_name if old else "")
        if view is None:
            self.migrations.pop(key, None)
            self._migrations_by_vmi[(key[0], vmi_name)].discard(key[1])
            self.active_migrations.discard(key)
        else:
            self.migrations[key] = view
            self._migrations_by_vmi[(key[0], vmi_name)].add(key[1])
            if view.final:
                self.active_migrations.discard(key)
            else:
                self.active_migrations.add(key)
        return self._owner_set((key[0], vmi_name))

    def migrations_of(self, namespace: str, vmi_name: str) -> list[MigrationView]:
        names = self._migrations_by_vmi.get((namespace, vmi_name), set())
        return [
            self.migrations[(namespace, n)]
            for n in sorted(names)
            if (namespace, n) in self.migrations
        ]

    def in_flight(self, security_waiting: int = 0) -> InFlight:
        """Migrations KubeVirt runs now, by source node, for the fleet planner's limits."""
        by_node: Counter[str] = Counter()
        security = moving = 0
        for ns, name in self.active_migrations:
            mig = self.migrations[(ns, name)]
            vmi = self.vmis.get((ns, mig.vmi_name))
            # The source node: KubeVirt moves the VMI's nodeName to the target when the
            # migration completes, a moment before the VMIM turns Succeeded; counting by nodeName
            # then freed the source's slot early (seen by the reliability suite: 4 outbound
            # migrations from one node with a limit of 2, just after an operator restart).
            state = vmi.migration if vmi is not None else None
            if state is not None and state.migration_uid == mig.uid and state.source_node:
                by_node[state.source_node] += 1
            elif vmi is not None and vmi.node_name:
                by_node[vmi.node_name] += 1
            if mig.securevm is not None:
                if mig.trigger == RelocationTrigger.MOVING_TARGET_DEFENSE:
                    moving += 1
                else:
                    security += 1
        return InFlight(
            total=len(self.active_migrations),
            by_node=by_node,
            security=security,
            moving_target=moving,
            security_waiting=security_waiting,
        )

    # ---------------------------------------------------------------- planner input

    def snapshot(self, now: datetime | None = None) -> NodeSnapshot:
        """The nodes as planned at `now` (verdicts expired by then void their profiles)."""
        return NodeSnapshot(
            self.nodes, self.by_profile, self.revoked_at, self.load, self.expiry, now
        )

    def observation(self, key: Key, snapshot: NodeSnapshot | None = None) -> Observation | None:
        svm = self.svms.get(key)
        if svm is None:
            return None
        vm_key = (key[0], svm.vm_name)
        rejected = self.vm_rejections.get(key)
        refused = self.migration_refusals.get(key)
        owner = self.owner_of(*vm_key)
        return Observation(
            svm=svm,
            resolution=self.resolution(key),
            catalog=self.profiles,
            nodes=snapshot or self.snapshot(),
            vm=self.vms.get(vm_key),
            vmi=self.placed_vmi(vm_key),
            migrations=self.migrations_of(*vm_key),
            vm_rejected=rejected[2]
            if rejected and rejected[:2] == (svm.uid, svm.generation)
            else None,
            vm_owner=owner[1] if owner is not None and owner != key else None,
            migration_refused=refused[1:] if refused and refused[0] == svm.uid else None,
        )

    def keys_on_node(self, name: str) -> set[Key]:
        return set(self._svms_on_node.get(name, set()))

    def all_keys(self) -> Iterable[Key]:
        return list(self.svms)


_LATEST = datetime.max.replace(tzinfo=UTC)


def choose_owner(claimants: Iterable[SecureVMView], vm: VMView | None) -> SecureVMView:
    """The owner among SecureVMs claiming one VM: named by the VM's ownerReferences, else by
    its label, else the oldest with a valid spec (then by uid): the same answer on every
    replica and after every restart."""
    views = list(claimants)
    if vm is not None:
        for view in views:
            if view.uid and view.uid in vm.owner_uids:
                return view
        for view in views:
            if vm.securevm == view.name:
                return view
    return min(views, key=lambda v: (v.spec is None, v.created or _LATEST, v.uid, v.name))


def _fingerprint(res: Resolution, catalog: Iterable[ProfileCapabilities]) -> tuple[object, ...]:
    """What of a resolution shapes placement: the satisfying set and the cost preferences."""
    return (res.satisfying, repr(cost_preferences(res.satisfying, catalog)))

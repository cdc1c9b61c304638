"""Hot paths found by profiling the benchmarks, and what fixing them bought (issue 7, item 6).

The "before" figures were measured with the same benchmark on the revision before the fix, on
the same machine; the "after" figure of each entry is the current result named by
`benchmark`/`figure`, so the report always shows the fix against today's measurement.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fix:
    where: str
    """File and function."""
    found: str
    """What the profile showed."""
    change: str
    before: str
    """The figure before the fix, with how it was measured."""
    after: str
    """The figure after the fix, measured the same way."""
    commit: str = ""


FIXES: list[Fix] = [
    Fix(
        where="policy/matching.py `match`, `satisfying`; policy/request.py `SecurityRequest`",
        found=(
            "on `--only core`, 80 % of `match` was the generator walking `for e in Entity for p "
            "in Property` (14 cells) per (request, profile) pair: iterating an Enum costs ~1 us "
            "per pass, 8 passes per match; `satisfying` built every `Match` with its unmet "
            "cells only to keep the satisfied names."
        ),
        change=(
            "the requested cells in the paper's order are computed once per request "
            "(`SecurityRequest.ordered_cells`) and the `Yes` cells once per profile "
            "(`ProfileCapabilities.protected`); `match` is a subset test, and walks the "
            "request's own cells only when it fails; `satisfying` uses the new boolean "
            "`satisfies` and builds no reasons. Same answers (tests/unit/policy and the "
            "benchmark's own comparison with the baseline)."
        ),
        before=(
            "quick run, shared machine (load ~2.3 on 2 cores), medians of 3 alternating runs "
            "of revision 9640654: 79,000 match evaluations/s; fleet placement 495 us per VM "
            "on 200 nodes"
        ),
        after=(
            "same runs, working tree: 250,000 evaluations/s (3.1x); 74 us per VM (6.7x, "
            "together with the next entry)"
        ),
    ),
    Fix(
        where="policy/placement.py `NodeView.verified`",
        found=(
            "on `--only core`, 64 % of fleet placement was `verified_profiles` re-parsing "
            "every node's labels for every VM in `eligible_nodes`."
        ),
        change=(
            "`verified` is a `cached_property` (a node's labels never change in place; a label "
            "event builds a new NodeView). Made by the operator's author in the same tree."
        ),
        before="495 us per VM on 200 nodes (as above)",
        after="360-455 us per VM with this change alone; 74 us with both",
    ),
    Fix(
        where="adapters/controller.py `Controller._plan_and_execute` (migration slots)",
        found=(
            "`--only fanout`'s peak-in-flight count: 6 migrations leaving one node against "
            "KubeVirt's (and the operator's) per-node budget of 2. A granted migration counted "
            "as in flight only once its VMIM was created and watched back; batches planned "
            "while create calls were pending handed the same slots out again."
        ),
        change=(
            "a granted migration holds its slot from the grant until its create call "
            "finished (`_dispatched`, added to `World.in_flight()` for every batch)."
        ),
        before=(
            "10 SecureVMs on one node revoked (4 nodes, durations x0.1, shared machine): peak "
            "6 in flight; all created after 4.8 s, all compliant after 11.3 s (KubeVirt queued "
            "the surplus itself)"
        ),
        after=(
            "peak 2 in flight; all created after 15.5 s, all compliant after 19.0 s: within "
            "the budget, and slower in wall time, because each round now also waits for the "
            "operator to see a slot free (the slot-refill figure)"
        ),
    ),
    Fix(
        where="sandbox/kubevirt_sim.py `KubeVirtSimulator._write_vm_status`",
        found=(
            "py-spy on the benchmark process during `--only scale`: 62 % of the simulator's "
            "thread in `_write_vm_status` merge patches. The VM's old Ready condition was "
            "dropped before `_set_condition`, so Ready got a new lastTransitionTime on every "
            "pass: one status write per VM per pass, each echoed to the operator as a VM event."
        ),
        change="keep the old conditions for `_set_condition` (one line).",
        before="steady state, 300 VMs: 207 VM objects rewritten within 5 s",
        after="0 rewritten within 5 s; tests/e2e/test_testbed.py passes",
    ),
    Fix(
        where="verifier/controller.py `Verifier._work` (one worker thread)",
        found=(
            "`--only attestation`: the pure verification step takes ~1.2 ms, the verifier "
            "process ~6.3 ms of CPU per quote, yet a burst drained at 18-31 nodes/s: one worker "
            "did each node's status write synchronously and waited on the apiserver most of "
            "the time."
        ),
        change=(
            "`--workers` (default 4, chart `verifier.workers`) threads take keys from the "
            "WorkQueue, which now keeps a 'processing' set (a key is never handed to two "
            "workers; an add while processing is deferred until done); two nodes presenting "
            "one EK are judged one after the other (striped lock on the EK fingerprint, "
            "unit-tested: without it both enroll). The benchmark now also pauses the agents "
            "while the verifier drains (the headline figure) and reports kube-apiserver + "
            "etcd CPU per verified quote."
        ),
        before=(
            "full run at f435335, agents running on the same cores: median 30.9 nodes/s "
            "(8 agents), 18.0 (32 agents)"
        ),
        after=(
            "this run: agents running (`sandbox_throughput_*`) 36.6 and 24.0 nodes/s; agents "
            "paused (`verifier_throughput_*`) 73.1 and 68.2 nodes/s. What is left is the "
            "machine: see the open finding on kube-apiserver CPU per quote."
        ),
    ),
    Fix(
        where="sandbox/kubevirt_sim.py `KubeVirtSimulator._loop`",
        found=(
            "an operator log with timestamps per watch event (raise trials): 26 ms from the "
            "VM affinity patch to the VMI carrying it, of which 20 ms were the simulator's "
            "fixed coalescing sleep after every wake-up, a delay KubeVirt's workqueues do "
            "not have."
        ),
        change=(
            "coalesce for about as long as the last pass took (1-20 ms): a pass over a big "
            "fleet is still not repeated per event, a small fleet reacts at once."
        ),
        before="VM patched -> VMI updated: 26 ms (one trial, operator log)",
        after=(
            "14 ms (same probe); raise -> VMIM median 102 ms in this run against 106.7 ms "
            "before, within the spread"
        ),
    ),
    Fix(
        where="node-agent/sod_node_agent/schedule.py `plan` with `--interval 0`",
        found=(
            "while waiting for a nonce the plan's wait was `interval`, so `--interval 0` "
            "re-read the claims in a busy loop (8 agents held the machine at 100 % and the "
            "verifier saw 3 nodes/s)."
        ),
        change=(
            "waiting for a new nonce waits for the watch (a new nonce is a status change) "
            "or the claims poll; the interval only paces answers (unit-tested)."
        ),
        before="8 agents with --interval 0: the machine at 100 %",
        after="an idle agent wakes every --poll (0.5 s) or on a status change",
    ),
    Fix(
        where="sandbox/kubeapi.py `KubeApi.watch`",
        found=(
            "after `close_watches()` the aborted stream's connection went back into the pool "
            "(`release_conn()` in the `finally`), and the next request on that client read "
            "leftover chunk bytes: `BadStatusLine('2fb\\r\\n')` in a loop (seen in "
            "`--only fanout` before each watch got its own client)."
        ),
        change=(
            "a stream that did not end cleanly (aborted, failed, or no longer read) closes "
            "its connection before releasing it."
        ),
        before="BadStatusLine on the next request after close_watches()",
        after="the pool opens a new connection; tests/e2e pass",
    ),
]


@dataclass(frozen=True)
class Finding:
    where: str
    measured: str
    proposal: str


OPEN: list[Finding] = [
    Finding(
        where="policy/plan.py `NodeSnapshot.eligible` in full passes",
        measured=(
            "`--only scale`: a full pass costs ~1 ms per SecureVM (1.0 s at 1,000, 13.5 s at "
            "20,000); py-spy puts most of it in `eligible` -> `term_matches` over every node "
            "of the satisfying profiles, for every SecureVM, although thousands of SecureVMs "
            "share the same (satisfying profiles, tenant terms)."
        ),
        proposal=(
            "memoize `eligible` per snapshot by (satisfying profiles, canonical tenant terms); "
            "it speeds up initial convergence and the periodic safety-net resync, not the "
            "event path (which is already flat: ~2-3 ms per revocation from 1,000 to 20,000)."
        ),
    ),
    Finding(
        where="kopf diffbase on every watch event (adapters/runtime.py `configure_kopf`)",
        measured=(
            "py-spy of the operator converging 300 SecureVMs: ~10 % of its samples in "
            "`AnnotationsDiffBaseStorage.build` (a deepcopy of every body of every event), "
            "which only change-detecting handlers need; the operator uses index and event "
            "handlers only."
        ),
        proposal=(
            "check whether kopf skips the diffbase when no on.create/update/resume handler "
            "exists; otherwise a StatusDiffBaseStorage/no-op storage avoids the copies."
        ),
    ),
    Finding(
        where="kube-apiserver + etcd per verified quote (verifier throughput)",
        measured=(
            "`--only attestation` with the agents paused: kube-apiserver and etcd spend "
            "17.5-25 ms of CPU per verified quote (the NodeAttestation status PUT with a "
            "verdict per profile, its admission and validation, the watch fan-out) and the "
            "verifier 7-7.5 ms: 2 cores / ~25-32 ms = 60-80 nodes/s is the ceiling of this "
            "machine, which the 68-73 nodes/s measured are close to. 200 nodes/s needs about "
            "10 ms per quote in all."
        ),
        proposal=(
            "shrink the per-round write: verdicts only for profiles that have an attestation "
            "policy, and no rewrite of unchanged verdicts (a merge patch of `evidence` and "
            "`challenge`); measure the apiserver's share again, then on a machine where the "
            "control plane has cores of its own."
        ),
    ),
    Finding(
        where="policy/relocation.py (request raised -> VMIM)",
        measured=(
            "operator log of one raise trial, from the SecureVM event (with the withdrawn "
            "variant below): status + VM patch done at +23 ms (~12 ms more in sequence), "
            "VMI carrying the new affinity at +37 ms (KubeVirt's hop), the "
            "status recording the migration +20-40 ms (a SecureVM status PUT costs ~12 ms on "
            "a quiet apiserver against ~3 ms for a ConfigMap of the same size), the VMIM "
            "+6 ms: ~70-85 ms in the operator, plus ~10 ms from the write to kopf's event."
        ),
        proposal=(
            "tried here and withdrawn: writing the status and the VM patch of a patch-only "
            "plan concurrently brought the median to 93 ms, but an adopted SecureVM's status "
            "then stopped updating in tests/e2e/test_reliability_authz.py (root cause not "
            "found). Next: find that race, then record the relocation (name, attempt, target) "
            "in the first status write, with the affinity patch, so that the create waits on "
            "nothing once KubeVirt copied the affinity; the recorded-but-not-created path "
            "must then wait for the affinity too and drop a record whose target is gone."
        ),
    ),
]


def render() -> list[str]:
    lines = ["## Profiling and fixes (before / after)", ""]
    if not FIXES:
        return [*lines, "No hot path fixed yet.", ""]
    lines += [
        "Profiles taken with pyinstrument (pure core) and py-spy (the operator and the "
        "benchmark process: `SOD_BENCH_PROFILE=DIR` makes the test bed record the operator "
        "with py-spy when it is installed). The before and after figures come from the same "
        "benchmark on the same machine, before and after the change.",
        "",
    ]
    for fix in FIXES:
        lines += [
            f"### {fix.where}",
            "",
            f"* **Profile**: {fix.found}",
            f"* **Change**: {fix.change}" + (f" ({fix.commit})" if fix.commit else ""),
            f"* **Before**: {fix.before}",
            f"* **After**: {fix.after}",
            "",
        ]
    if OPEN:
        lines += ["## Found and not fixed here (proposals for the owners)", ""]
        for f in OPEN:
            lines += [f"* **{f.where}**: {f.measured} *Proposal*: {f.proposal}", ""]
    return lines

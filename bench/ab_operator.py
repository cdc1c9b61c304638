"""Same bed, same run: the operator of one checkout against the operator of another.

    python -m bench.ab_operator --before-src /tmp/op414 --trials 10 [--block 5]
                                [--first before|after] [--after-src .] [--out FILE]

A tool, not part of `make bench`'s plan. It answers one question: did a change to the
operator's code move its reaction time? Earlier before/after pairs came from two runs on two
beds (the KubeVirt simulator, then real virt-controller and virt-api), so they could not tell
the operator's share from the bed's. Here both operators run in ONE sandbox -- the reaction
benchmark's (bench/reaction.py: real control plane, KubeVirt v1.9.0's virt-api and
virt-controller, the virt-handler player, 4 hyperwall + 3 tpm-measured-boot kwok nodes) --
each as its own process (`python -m sod_operator.main` with PYTHONPATH set to that checkout's
`operator/` only), in alternating blocks (before, after, before, after, ...) so the machine's
load falls on both alike (`--first after` swaps the order, so a second run can check that the
order did not matter). Each block starts its operator, runs the reaction benchmark's own
trials (`revocation_trials`, `raise_trials`) in namespaces of its own, deletes them and stops
the operator. Spans per trial: label_removed -> vmim_created (trust revoked) and
request_raised -> vmim_created (request raised).

`--before-src` is a checkout of the older commit, e.g. `git worktree add /tmp/op414 414601f`.
Only its `operator/` package is used; the CRDs, catalog, test bed and bench are this checkout's
(an older operator reads today's CRDs as long as they only add fields: its models ignore
unknown ones). The JSON written under build/ keeps every trial's timeline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import reaction, testbed
from bench.stats import percentile
from bench.timeline import Timeline, span_ms

REPO_ROOT = Path(__file__).resolve().parents[1]
SPANS = (
    ("revoked", "label_removed", "vmim_created"),
    ("raised", "request_raised", "vmim_created"),
)
"""(trigger, start stage, end stage) of the spans compared."""
ARMS = ("before", "after")
TRIAL_TIMEOUT = 120.0


# ---- pure helpers -------------------------------------------------------------------------------


def block_plan(trials: int, block: int, first: str = "before") -> list[tuple[str, int]]:
    """Alternating blocks (before, after, before, after, ...; `first` = "after" swaps them) of
    at most `block` trials per trigger, `trials` per arm in all; the last pair is shorter when
    `block` does not divide."""
    if trials < 1 or block < 1:
        raise ValueError("trials and block must be positive")
    order = ARMS if first == ARMS[0] else ARMS[::-1]
    plan = []
    done = 0
    while done < trials:
        size = min(block, trials - done)
        plan += [(arm, size) for arm in order]
        done += size
    return plan


def operator_env(src: Path, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of an operator from checkout `src`: its `operator/` as the only
    PYTHONPATH entry, so `sod_operator` (and every submodule) comes from that checkout and
    none from the bench's own path."""
    env = {k: v for k, v in base.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(src / "operator")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def summary(samples: Sequence[float]) -> dict[str, float | int | None]:
    if not samples:
        return {"n": 0, "median": None, "p90": None}
    return {"n": len(samples), "median": percentile(samples, 50), "p90": percentile(samples, 90)}


def ratio(after: float | int | None, before: float | int | None) -> float | None:
    return None if after is None or not before else float(after) / float(before)


def compare(timelines: Mapping[str, Mapping[str, Sequence[Timeline]]]) -> list[dict[str, Any]]:
    """Per span: each arm's n/median/p90 and after/before of the median and of p90.
    `timelines[arm][trigger]` holds that arm's trials."""
    rows = []
    for trigger, start, end in SPANS:
        arms = {arm: summary(span_ms(timelines[arm][trigger], start, end)) for arm in ARMS}
        rows.append({
            "span": f"{start} -> {end}",
            "trigger": trigger,
            **arms,
            "ratio_median": ratio(arms["after"]["median"], arms["before"]["median"]),
            "ratio_p90": ratio(arms["after"]["p90"], arms["before"]["p90"]),
        })  # fmt: skip
    return rows


def _num(value: float | int | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: Sequence[Mapping[str, Any]], commits: Mapping[str, str]) -> str:
    """The comparison as a plain-text table (ms; ratio = after / before)."""
    head = f"{'span':34} {'operator':8} {'commit':9} {'n':>3} {'median ms':>10} {'p90 ms':>10}"
    lines = [head, "-" * len(head)]
    for row in rows:
        for i, arm in enumerate(ARMS):
            s = row[arm]
            lines.append(
                f"{row['span'] if i == 0 else '':34} {arm:8} {commits[arm][:7]:9} {s['n']:>3} "
                f"{_num(s['median'], '.1f'):>10} {_num(s['p90'], '.1f'):>10}"
            )
        lines.append(
            f"{'':34} {'after/before':22} {_num(row['ratio_median'], '.2f'):>10} "
            f"{_num(row['ratio_p90'], '.2f'):>10}"
        )
    return "\n".join(lines)


# ---- the shell ----------------------------------------------------------------------------------


def checkout(src: Path) -> dict[str, Any]:
    """Commit and cleanliness of a checkout (its operator/ is what runs)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip

    changes = git("status", "--porcelain", "--untracked-files=no", "--", "operator")
    return {"path": str(src), "commit": git("rev-parse", "HEAD"), "operator_clean": not changes}


def imported_from(src: Path) -> str:
    """Where `sod_operator` resolves with `operator_env(src)`; refuses any other checkout."""
    out = subprocess.run(
        [sys.executable, "-c", "import sod_operator.main as m; print(m.__file__)"],
        env=operator_env(src, os.environ), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not Path(out).resolve().is_relative_to((src / "operator").resolve()):
        raise RuntimeError(f"sod_operator from {src} resolves to {out}")
    return out


def drop_namespace(bed: Any, namespace: str, timeout: float = 120.0) -> None:
    """Delete a block's namespace while its operator still runs (it may hold finalizers) and
    wait until its SecureVMs are gone, so the next block's operator inherits none."""
    bed.delete_namespace(namespace, timeout)
    deadline = time.monotonic() + timeout
    while bed.api.list(bed.securevm_path(namespace)).get("items"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"SecureVMs of {namespace} still there after {timeout:.0f} s")
        time.sleep(0.2)


def run_block(
    bed: Any, watches: Any, src: Path, arm: str, index: int, size: int, hyperwall: list[str]
) -> dict[str, Any]:
    """One block: this arm's operator, `size` revocation then `size` raise trials."""
    load_start = os.getloadavg()
    started = time.time()
    bed.start_operator(
        name=f"operator-{arm}-{index}",
        command=[sys.executable, "-m", "sod_operator.main"],
        env=operator_env(src, os.environ),
    )
    try:
        ns = bed.namespace(f"ab{index}-{arm}-revoke")
        revoked = reaction.revocation_trials(bed, watches, ns, size, TRIAL_TIMEOUT)
        drop_namespace(bed, ns)
        ns = bed.namespace(f"ab{index}-{arm}-raise")
        raised = reaction.raise_trials(bed, watches, ns, size, TRIAL_TIMEOUT, hyperwall)
        drop_namespace(bed, ns)
    finally:
        bed.stop_operator()
    watches.forget()
    return {
        "arm": arm,
        "index": index,
        "trials": size,
        "started": started,
        "seconds": time.time() - started,
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "revoked": [tl for tl, _ in revoked],
        "raised": [tl for tl, _ in raised],
    }


def run(sources: Mapping[str, Path], trials: int, block: int, first: str) -> dict[str, Any]:
    from sod_testbed.nodes import parse_nodes

    nodes = parse_nodes(reaction.NODES)
    hyperwall = [n.name for n in nodes if n.architecture == "hyperwall"]
    model, model_source = reaction.migration_model()
    player = reaction.player_config(model)
    blocks = []
    with testbed.sandbox(nodes, player, "ab-operator") as bed:
        for n in nodes:
            bed.set_verified(n.name, [n.architecture])
        watches = reaction.reaction_watches(bed.cluster.kubeconfig).start()
        try:
            for index, (arm, size) in enumerate(block_plan(trials, block, first)):
                blocks.append(run_block(bed, watches, sources[arm], arm, index, size, hyperwall))
                print(f"block {index} ({arm}, {size} trials/trigger) done in "
                      f"{blocks[-1]['seconds']:.0f} s", flush=True)  # fmt: skip
        finally:
            watches.stop()
    timelines = {arm: {t: [tl for b in blocks if b["arm"] == arm for tl in b[t]]
                       for t, _, _ in SPANS} for arm in ARMS}  # fmt: skip
    return {"nodes": reaction.NODES, "migration_model": model_source, "blocks": blocks,
            "comparison": compare(timelines)}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    what = (__doc__ or "").split("\n", 1)[0]
    p = argparse.ArgumentParser(prog="python -m bench.ab_operator", description=what)
    p.add_argument("--before-src", type=Path, required=True, help="checkout of the older commit")
    p.add_argument("--after-src", type=Path, default=REPO_ROOT, help="default: this checkout")
    p.add_argument("--trials", type=int, default=10, help="trials per operator per trigger")
    p.add_argument("--block", type=int, default=5, help="trials per trigger in one block")
    p.add_argument("--first", choices=ARMS, default="before", help="the arm of the first block")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "ab_operator.json")
    args = p.parse_args(argv)
    sources = {"before": args.before_src.resolve(), "after": args.after_src.resolve()}
    arms = {arm: {**checkout(src), "imports": imported_from(src)} for arm, src in sources.items()}
    started = time.time()
    result = run(sources, args.trials, args.block, args.first)
    commits = {arm: info["commit"] for arm, info in arms.items()}
    table = format_table(result["comparison"], commits)
    out = {
        "tool": "bench.ab_operator",
        "started": started,
        "duration_s": time.time() - started,
        "params": {"trials": args.trials, "block": args.block, "first": args.first},
        "operators": arms,
        "table": table,
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(table)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

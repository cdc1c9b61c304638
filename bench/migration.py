"""Real pre-copy live migrations on this machine, shaped like the paper's Table V (issue 18).

`make bench-migration` (= `python -m bench.run --only migration`); then the end-to-end
revocation timeline with a real migration in the loop (bench.migration_e2e). Each configuration
boots one guest (sod_testbed.qemu: stock Debian kernel, busybox initramfs, QEMU 7.2 under TCG,
1 vCPU, 1 GiB as the paper's VMs) in one of two network namespaces joined by a veth pair shaped to
1 Gbit/s with tc tbf (the paper's 1 Gbps link), then migrates it back and forth between the two
namespaces, each migration into a fresh destination QEMU. Every run checks the guest on the
destination (heartbeats continue, integrity checksum unchanged) and counts as ok only then.
"""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import dataclass
from typing import Any

from bench import migration_e2e, migration_fit
from bench.stats import Figure, Result, fmt

TITLE = "Live migration: real QEMU pre-copy (Table V)"
LINK_BITS = 1_000_000_000
MEMORY_MIB = 1024
MIB = 2**20

PAPER_TABLE_V = [  # workload, total time s, downtime ms, data sent MB (the paper's Table V)
    ("Mail Server", 8.9, 300, 800.39),
    ("App Server", 7.5, 4050, 728.21),
    ("File Server", 7.2, 250, 697.87),
    ("Web Server", 7.2, 250, 645.33),
    ("DB Server", 7.4, 450, 717.52),
    ("Stream Server", 8.0, 650, 716.21),
    ("Idle Server", 2.6, 200, 212.34),
]


@dataclass(frozen=True)
class Config:
    name: str
    rate_mib_s: int | None  # None: idle; 0: as fast as the vCPU can
    downtime_limit_ms: int = 300
    timeout_s: float = 60.0
    runs: int = 5
    wss_mib: int = 256

    def describe(self) -> str:
        if self.rate_mib_s is None:
            return "idle guest"
        rate = f"{self.rate_mib_s} MiB/s" if self.rate_mib_s else "as fast as it can"
        return f"rewrites {self.wss_mib} MiB at {rate}"


CONFIGS = [
    Config("idle", None),
    Config("dirty30", 30),
    Config("dirty60", 60),
    Config("dirtymax, downtime-limit 2.5 s", 0, downtime_limit_ms=2500),
    Config("dirtymax, downtime-limit 300 ms", 0, timeout_s=30.0, runs=1),
]


def missing() -> str:
    from sod_testbed.qemu.vm import QEMU

    for tool in (QEMU, "ip", "tc", "apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} not found (make deps installs qemu-system-x86 and iproute2)"
    return ""


def run(quick: bool = False) -> Result:
    from sod_testbed.qemu.image import build_guest

    image = build_guest()
    records: list[dict[str, Any]] = []
    for cfg in CONFIGS:
        runs = min(cfg.runs, 2) if quick else cfg.runs
        print(f"[bench] migration: {cfg.name} x{runs}", flush=True)
        records += run_config(cfg, image, runs)
    result = report(records, quick, image)
    print("[bench] migration: end to end (attestation, operator, KubeVirt, QEMU)", flush=True)
    migration_e2e.run_into(result, quick)
    return result


def run_config(cfg: Config, image: Any, runs: int) -> list[dict[str, Any]]:
    from sod_testbed.qemu.migrate import MigrationOptions, migrate
    from sod_testbed.qemu.netns import NetnsPair
    from sod_testbed.qemu.vm import GuestSpec, QemuGuest, Workload, short_run_dir

    workload = Workload() if cfg.rate_mib_s is None else Workload.dirty(cfg.rate_mib_s, cfg.wss_mib)
    spec = GuestSpec(image, workload, memory_mib=MEMORY_MIB)
    opts = MigrationOptions(
        max_bandwidth_bytes=None,  # the tbf link limits, also the stop-and-copy
        downtime_limit_ms=cfg.downtime_limit_ms,
        timeout_seconds=cfg.timeout_s,
    )
    run_dir = short_run_dir()
    out: list[dict[str, Any]] = []
    guests: list[Any] = []
    with NetnsPair() as pair:

        def boot(n: int, ns: str) -> Any:
            g = QemuGuest(spec, run_dir, f"g{n}", netns=ns).start()
            guests.append(g)
            g.wait_ready(timeout=300)
            time.sleep(5.0 if workload.mode == "dirty" else 1.0)  # the writer's rate settles
            return g

        try:
            src = boot(0, pair.a)
            for i in range(runs):
                ns = pair.other(src.netns)
                dst = QemuGuest(spec, run_dir, f"g{i + 1}", netns=ns, incoming=True).start()
                guests.append(dst)
                rate = _guest_rate(src)
                result = migrate(src, dst, f"tcp:{pair.address(ns)}:4444", opts)
                out.append(_record(cfg, i, rate, result))
                print(f"[bench] migration:   run {i + 1}: {_brief(result)}", flush=True)
                if result.status == "completed":
                    src.stop()
                    src = dst if result.ok else boot(100 + i, pair.a)
                else:
                    dst.stop()
                time.sleep(3.0 if workload.mode == "dirty" else 1.0)
        finally:
            for g in guests:
                g.stop()
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def _guest_rate(src: Any) -> float | None:
    from sod_testbed.qemu.console import write_rate_mib_s

    return write_rate_mib_s(src.console())


def _record(cfg: Config, i: int, rate: float | None, result: Any) -> dict[str, Any]:
    return {
        "config": cfg.name,
        "run": i + 1,
        "workload": "idle" if cfg.rate_mib_s is None else "dirty",
        "link": "netns",
        "memory_bytes": MEMORY_MIB * MIB,
        "wss_bytes": 0 if cfg.rate_mib_s is None else cfg.wss_mib * MIB,
        "downtime_limit_ms": cfg.downtime_limit_ms,
        "timeout_s": cfg.timeout_s,
        "guest_rate_mib_s": rate,
        **result.as_dict(),
    }


def _brief(r: Any) -> str:
    return (
        f"{r.status}, ok={r.ok}, total {r.total_ms} ms, downtime {r.downtime_ms} ms, "
        f"{(r.transferred_bytes or 0) / 1e6:.0f} MB"
    )


# ---- the report (pure) --------------------------------------------------------------------------


def _spread(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    if not values:
        return "-"
    xs = [v * scale for v in values]
    med = fmt(statistics.median(xs), digits)
    return med if len(xs) == 1 else f"{med} [{fmt(min(xs), digits)}-{fmt(max(xs), digits)}]"


def _values(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) is not None]


def report(records: list[dict[str, Any]], quick: bool, image: Any) -> Result:
    result = Result(name="migration", title=TITLE, method=METHOD)
    result.params = {
        "guest": f"{MEMORY_MIB} MiB, 1 vCPU, TCG",
        "kernel": f"{image.kernel_package} {image.kernel_version}",
        "link": "veth + tbf 1 Gbit/s",
        "runs": "2 (quick)" if quick else "5 (1 for dirtymax with the 300 ms limit)",
    }
    by_cfg = {c.name: [r for r in records if r["config"] == c.name] for c in CONFIGS}
    rows = []
    for cfg in CONFIGS:
        runs = by_cfg[cfg.name]
        ok = [r for r in runs if r["ok"]]
        rows.append(
            [
                cfg.name,
                cfg.describe(),
                _spread(_values(runs, "guest_rate_mib_s")),
                f"{len(ok)}/{len(runs)}",
                _spread(_values(ok, "total_ms"), 1e-3) if ok else _cancelled(runs),
                _spread(_values(ok, "downtime_ms")),
                _spread(_values(ok, "pause_ms")),
                _spread(_values(ok or runs, "transferred_bytes"), 1e-6),
                _spread(_values(ok or runs, "dirty_sync_count")),
            ]
        )
        for key, label, unit, scale in (
            ("total_ms", "total time", "s", 1e-3),
            ("downtime_ms", "downtime", "ms", 1.0),
        ):
            samples = [v * scale for v in _values(ok, key)]
            if samples:
                result.figures.append(
                    Figure(f"{cfg.name}:{key}", f"{cfg.name}: {label}", unit, "lower", samples)
                )
    result.add_table(
        "Measured here (median [min-max] over the runs; ok = completed and the guest checked "
        "alive and intact on the destination)",
        ["config", "guest workload", "guest write rate MiB/s", "ok/runs", "total time s",
         "downtime ms (QEMU)", "pause ms (STOP->RESUME)", "data sent MB", "dirty syncs"],
        rows,
    )  # fmt: skip
    result.add_table(
        "The paper's Table V (KVM, 1 GB guests, 1 Gbps LAN, averages of 5 migration points)",
        ["workload", "total time s", "downtime ms", "data sent MB"],
        [list(r) for r in PAPER_TABLE_V],
        note=CONDITIONS,
    )
    _add_fit(result, records)
    raw = ["config", "run", "guest_rate_mib_s", "status", "ok", "total_ms", "downtime_ms",
           "pause_ms", "transferred_bytes", "dirty_sync_count", "guest_check"]  # fmt: skip
    result.add_table("Every run", raw, [[r.get(k) for k in raw] for r in records])
    return result


def _cancelled(runs: list[dict[str, Any]]) -> str:
    r = runs[0] if runs else None
    if r is None:
        return "-"
    return f"{r['status']} after {fmt((r.get('total_ms') or 0) / 1000)} s"


def _add_fit(result: Result, records: list[dict[str, Any]]) -> None:
    try:
        params = migration_fit.fit(records, LINK_BITS / 8)
    except ValueError as err:
        result.not_run["model fit"] = str(err)
        return
    result.params["fit_parameters"] = params
    rows = []
    for cfg in CONFIGS:
        runs = [r for r in records if r["config"] == cfg.name]
        ok = [r for r in runs if r["ok"]]
        rates = _values(runs, "guest_rate_mib_s")
        conf = {
            "memory_bytes": MEMORY_MIB * MIB,
            "wss_bytes": 0 if cfg.rate_mib_s is None else cfg.wss_mib * MIB,
            "rate_bytes": statistics.median(rates) * MIB if rates else 0.0,
            "downtime_limit_ms": cfg.downtime_limit_ms,
            "timeout_s": cfg.timeout_s,
        }
        p = migration_fit.predict(conf, params, LINK_BITS)
        held = _held_out(records, cfg.name, conf)
        m_total = statistics.median(_values(ok, "total_ms")) if ok else None
        m_down = statistics.median(_values(ok, "downtime_ms")) if ok else None
        m_data = statistics.median(_values(ok, "transferred_bytes")) if ok else None
        rows.append(
            [
                cfg.name,
                f"{'yes' if ok else 'no'} / {'yes' if p['converged'] else 'no'}",
                f"{fmt(m_total and m_total / 1000)} / {fmt(p['total_ms'] / 1000)}",
                _pct(migration_fit.rel_error(p["total_ms"], m_total) if ok else None),
                _pct(migration_fit.rel_error(held, m_total) if ok else None),
                f"{fmt(m_down)} / {fmt(p['downtime_ms'])}",
                _pct(migration_fit.rel_error(p["downtime_ms"], m_down) if ok else None),
                f"{fmt(m_data and m_data / 1e6)} / {fmt(p['data_bytes'] / 1e6)}",
                _pct(migration_fit.rel_error(p["data_bytes"], m_data) if ok else None),
            ]
        )
    result.add_table(
        "The pre-copy model (sod_testbed.migration_model) fitted to these runs: measured median / "
        "model, and the model's error",
        ["config", "converged (measured / model)", "total time s", "error",
         "error, fitted without this config", "downtime ms", "error", "data sent MB", "error"],
        rows,
        note=(
            "Fitted: " + ", ".join(f"`{k}` = {fmt(v)}" for k, v in params.items()) + ". "
            + "Fit, from "
            + migration_fit.__doc__.split("Fit, from", 1)[1].replace("\n", " ").strip()
        ),
    )  # fmt: skip


def _held_out(records: list[dict[str, Any]], name: str, conf: dict[str, Any]) -> float | None:
    """The model's total time (ms) for `name` fitted on the other configurations' runs only
    (None when they cannot be fitted alone: the idle runs give the floor and resident memory)."""
    try:
        params = migration_fit.fit([r for r in records if r["config"] != name], LINK_BITS / 8)
    except ValueError:
        return None
    plan = migration_fit.predict(conf, params, LINK_BITS)
    return float(plan["total_ms"]) if plan["converged"] else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{round(100 * x):+d} %"  # never "-0 %"


METHOD = """\
Real pre-copy live migrations between two `qemu-system-x86_64` processes (QEMU 7.2 from Debian,
**TCG**: `/dev/kvm` on these machines is a software hypervisor with which no guest boots, see
shared/notes/qemu-migration.md). The guest is the stock Debian kernel with a busybox initramfs
(`tools/build-guest.sh`), 1 GiB and 1 vCPU as the paper's VMs; its `/init` prints a heartbeat
with the checksum of a region written at boot, and optionally rewrites a 256 MiB working set of
random data at a set rate (the rate in the table is the guest's own, from its progress lines).
Source and destination are two network namespaces joined by a veth pair shaped with
`tc tbf rate 1gbit burst 1mb latency 50ms` (QEMU's own cap is off: it does not cover the
stop-and-copy, so on loopback the downtime would be a memory copy). Each configuration boots one
guest and migrates it back and forth, each time into a fresh destination QEMU; a run is ok when
QEMU reports completed **and** the destination's console shows the heartbeats going on with the
boot checksum. Figures are QEMU's `query-migrate` (total time, downtime, data sent =
ram.transferred, dirty syncs); the pause is the host-clock gap between the source's STOP and the
destination's RESUME events. Non-convergence is stopped with `migrate_cancel` at the timeout.

Then the end-to-end timeline (bench/migration_e2e.py): a sandbox with two hyperwall nodes, each
with swtpm + node-agent, the verifier, sod-operator, KubeVirt's virt-api and virt-controller,
and the virt-handler player running VM-B as a real 1 GiB idle QEMU guest, each node a network
namespace whose NIC is shaped as above; each trial breaks the runtime evidence of the VM's node
and records when each stage was observed, up to the VM running on the other node after a real
pre-copy (what is real and what is played: the note under its table).
"""

CONDITIONS = """\
What differs from the paper: TCG (an emulated CPU, several times slower than KVM: the guest's
own dirtying is slower and the migration thread competes with the vCPU for 2 shared cores)
instead of KVM on dual quad-core Nehalem hosts; synthetic workloads (idle, rewriting a 256 MiB
working set at 30/60 MiB/s or as fast as possible) instead of mail/app/file/web/DB/stream
servers; a busybox guest whose idle resident memory (kernel, initramfs, page cache) is much
smaller than an Ubuntu server's (the paper's idle server sent 212 MB); two namespaces on one
host with a token-bucket link instead of two hosts on a 1 Gbps LAN. The "dirtymax" rows are the
analogue of the paper's App Server: a dirty rate near the link rate does not converge under the
default 300 ms downtime target (stopped at 30 s), and a larger target buys convergence with a
multi-second pause. On a loaded machine the TCG guest cannot reach its set rate (see the
measured write rate) and the migration thread is CPU-bound, not link-bound: read the load
line above before comparing.
"""

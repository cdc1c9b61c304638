"""The chart's trust webhook values (`verifier.notifications`): off by default; when on, the
verifier gets `--notify-*` flags that `sod-verifier` parses, the HMAC key from the named Secret
and the receiver's CA bundle from a ConfigMap; on without a URL or Secret, rendering fails.
The PrometheusRule's verifier alerts use the metrics the verifier exports (see
test_prometheusrule.py for every rule's PromQL)."""

from __future__ import annotations

from typing import Any

from sod_operator.verifier.main import build_parser

from tests.chart.helmcli import CHART, VALUES_DIR, Helm, parse_rendered

ON = (
    "--set", "verifier.notifications.enabled=true",
    "--set", "verifier.notifications.url=https://alerts.example.com/sod",
    "--set", "verifier.notifications.secretName=sod-webhook",
    "--set", "verifier.notifications.timeoutSeconds=3",
)  # fmt: skip


def _verifier_pod(helm: Helm, *extra: str) -> dict[str, Any]:
    objs = parse_rendered(helm.template(None, *extra))
    (dep,) = [o.obj for o in objs if o.kind == "Deployment" and o.name.endswith("-verifier")]
    pod: dict[str, Any] = dep["spec"]["template"]["spec"]
    return pod


def test_notifications_are_off_by_default(helm: Helm) -> None:
    pod = _verifier_pod(helm)
    (container,) = pod["containers"]
    assert not [a for a in container["args"] if a.startswith("--notify")]
    assert build_parser().parse_args(container["args"]).notify_url == ""
    assert not [v for v in pod["volumes"] if v["name"].startswith("notify")]


def test_notifications_get_url_key_and_ca_bundle(helm: Helm) -> None:
    pod = _verifier_pod(
        helm, *ON, "--set", "verifier.notifications.caBundle.configMapName=receiver-ca"
    )
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.notify_url == "https://alerts.example.com/sod"
    assert args.notify_timeout == 3
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert volumes["notify-key"]["secret"] == {
        "secretName": "sod-webhook",
        "items": [{"key": "hmac-key", "path": "hmac-key"}],
    }
    assert str(args.notify_secret_file) == f"{mounts['notify-key']}/hmac-key"
    assert volumes["notify-ca"]["configMap"]["name"] == "receiver-ca"
    assert str(args.notify_ca_bundle) == f"{mounts['notify-ca']}/ca.crt"


def test_notifications_without_a_secret_are_refused(helm: Helm) -> None:
    proc = helm.run(
        "template", "sod", str(CHART),
        "--set", "verifier.notifications.enabled=true",
        "--set", "verifier.notifications.url=https://x.example.com/",
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "needs verifier.notifications.url and .secretName" in proc.stderr


def test_verifier_alerts_cover_readiness_overdue_evidence_and_webhook_failures(
    helm: Helm,
) -> None:
    objs = parse_rendered(helm.template(VALUES_DIR / "production.yaml"))
    (rule,) = [o.obj for o in objs if o.kind == "PrometheusRule"]
    exprs = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "sod_attestation_verifier_ready" in exprs["SodVerifierDown"]
    assert 'absent(up{job="' in exprs["SodVerifierDown"]
    assert "sod_attestation_evidence_overdue_nodes" in exprs["SodEvidenceOverdue"]
    assert 'result=~"failed|dropped"' in exprs["SodTrustNotificationsFailing"]

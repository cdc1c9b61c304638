"""The virt-handler player's pure decisions, and the KubeVirt wiring's object rewrites."""

from __future__ import annotations

from pathlib import Path

import pytest
from sod_testbed.handler_player import (
    live_migratable,
    merged,
    migration_method,
    with_probe_times,
)
from sod_testbed.kubevirt import kwok_stages_with_image_ids, webhooks_at
from sod_testbed.nodes import NodeSpec, NodeSpecError, apply_cpus, parse_nodes


def _vmi(spec: dict, annotations: dict | None = None) -> dict:
    return {"metadata": {"name": "v", "annotations": annotations or {}}, "spec": spec}


def _masquerade(**domain: object) -> dict:
    return {
        "domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}}]}, **domain},
        "networks": [{"name": "default", "pod": {}}],
        "volumes": [{"name": "root", "containerDisk": {"image": "x"}}],
    }


def test_a_masquerade_vmi_is_live_migratable_with_a_null_probe_time() -> None:
    cond = live_migratable(_vmi(_masquerade()))
    assert cond["status"] == "True"
    assert cond["lastProbeTime"] is None


@pytest.mark.parametrize(
    ("security", "reason", "message"),
    [
        ({"sev": {}}, "SEVNotLiveMigratable", "VMI uses SEV"),
        ({"snp": {}}, "SEVNotLiveMigratable", "VMI uses SEV"),
        ({"tdx": {}}, "TDXNotLiveMigratable", "VMI uses TDX"),
    ],
)
def test_confidential_vmis_are_not_live_migratable(
    security: dict, reason: str, message: str
) -> None:
    cond = live_migratable(_vmi(_masquerade(launchSecurity=security)))
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", reason, message)


def test_a_bridge_on_the_pod_network_is_not_migratable_without_kubevirts_annotation() -> None:
    spec = _masquerade()
    spec["domain"]["devices"]["interfaces"] = [{"name": "default", "bridge": {}}]
    assert live_migratable(_vmi(spec))["reason"] == "InterfaceNotLiveMigratable"
    allowed = _vmi(spec, {"kubevirt.io/allow-pod-bridge-network-live-migration": ""})
    assert live_migratable(allowed)["status"] == "True"


def test_a_pvc_that_is_not_shared_blocks_migration() -> None:
    spec = _masquerade()
    spec["volumes"] = [{"name": "d", "persistentVolumeClaim": {"claimName": "c"}}]
    vmi = _vmi(spec)
    vmi["status"] = {
        "volumeStatus": [{"name": "d", "persistentVolumeClaimInfo": {"accessModes": ["RWO"]}}]
    }
    assert live_migratable(vmi)["reason"] == "DisksNotLiveMigratable"
    vmi["status"]["volumeStatus"][0]["persistentVolumeClaimInfo"]["accessModes"] = ["ReadWriteMany"]
    assert live_migratable(vmi)["status"] == "True"
    assert migration_method(vmi) == "LiveMigration"


def test_a_container_disk_means_block_migration() -> None:
    assert migration_method(_vmi(_masquerade())) == "BlockMigration"


def test_merge_patch_deletes_on_null_and_keeps_nulls_inside_lists() -> None:
    obj = {"metadata": {"labels": {"a": "1", "b": "2"}}, "status": {"x": 1}}
    patch = {"metadata": {"labels": {"a": None}}, "status": {"conditions": [{"t": None}]}}
    assert merged(obj, patch) == {
        "metadata": {"labels": {"b": "2"}},
        "status": {"x": 1, "conditions": [{"t": None}]},
    }
    assert obj["metadata"]["labels"] == {"a": "1", "b": "2"}  # the input is not changed


def test_every_condition_gets_an_explicit_probe_time() -> None:
    conds = with_probe_times([{"type": "Ready"}, {"type": "X", "lastProbeTime": "t"}])
    assert conds == [
        {"type": "Ready", "lastProbeTime": None},
        {"type": "X", "lastProbeTime": "t"},
    ]


def test_nodes_carry_virt_handler_capacity_and_labels() -> None:
    (plain,) = parse_nodes("plain=1")
    manifest = plain.manifest()
    capacity = manifest["status"]["capacity"]
    assert capacity["devices.kubevirt.io/kvm"] == "1000"
    assert "devices.kubevirt.io/sev" not in capacity
    labels = manifest["metadata"]["labels"]
    assert labels["cpu-vendor.node.kubevirt.io/Intel"] == "true"
    assert labels["host-model-cpu.node.kubevirt.io/SapphireRapids"] == "true"
    assert "kubevirt.io/sev" not in labels


def test_sev_snp_nodes_are_amd_with_sev_labels_and_device() -> None:
    node = NodeSpec("s", "sev-snp")
    labels = node.all_labels()
    assert labels["cpu-vendor.node.kubevirt.io/AMD"] == "true"
    assert labels["kubevirt.io/sev"] == labels["kubevirt.io/sev-snp"] == "true"
    assert node.resources()["devices.kubevirt.io/sev"] == "64"


def test_cpu_arguments_make_a_mixed_fleet() -> None:
    nodes = apply_cpus(parse_nodes("plain=2,hyperwall=1"), ["plain=amd", "plain-2=intel"])
    vendors = {n.name: n.cpu_info.vendor for n in nodes}
    assert vendors == {"plain-1": "AMD", "plain-2": "Intel", "hyperwall-1": "Intel"}
    with pytest.raises(NodeSpecError):
        apply_cpus(nodes, ["plain=arm"])
    with pytest.raises(NodeSpecError):
        apply_cpus(nodes, ["nowhere=amd"])


def test_webhooks_point_at_the_url_with_the_ca_bundle() -> None:
    config = {"webhooks": [{"clientConfig": {"service": {"name": "virt-api", "path": "/mutate"}}}]}
    out = webhooks_at(config, "https://127.0.0.1:1", "Q0E=")
    assert out["webhooks"][0]["clientConfig"] == {
        "url": "https://127.0.0.1:1/mutate",
        "caBundle": "Q0E=",
    }
    assert "service" in config["webhooks"][0]["clientConfig"]  # the input is not changed


def test_the_kwok_stage_writes_an_image_id(tmp_path: Path) -> None:
    stages = tmp_path / "in.yaml"
    stages.write_text("containerStatuses:\n      - image: {{ .image | Quote }}\n        name: x\n")
    out = kwok_stages_with_image_ids(stages, tmp_path / "out.yaml").read_text()
    assert 'imageID: {{ printf "sha256:%s" (sha256sum .image) | Quote }}' in out

"""The chart's PrometheusRule: every alert expression is valid PromQL, names only metrics the
operator and the verifier really export, and selects SecureVM conditions that exist.

The test bed has no Prometheus and no monitoring.coreos.com CRDs, so the rule object itself is
not dry-run against an apiserver (tests/e2e/test_chart_install.py says so); its shape is checked
here against the prometheus-operator fields the chart uses.
"""

from __future__ import annotations

import re
from typing import Any

import promql_parser
import pytest
from prometheus_client import CollectorRegistry
from sod_operator.adapters.metrics import Metrics as OperatorMetrics
from sod_operator.api.conditions import ConditionType
from sod_operator.verifier.metrics import Metrics as VerifierMetrics

from tests.chart.helmcli import VALUES_DIR, Helm, parse_rendered

RULE_FIELDS = {"alert", "expr", "for", "labels", "annotations"}
SEVERITIES = {"critical", "warning", "info"}


def exported(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def rules(helm: Helm) -> list[dict[str, Any]]:
    objs = parse_rendered(helm.template(VALUES_DIR / "production.yaml"))
    (rule,) = [o.obj for o in objs if o.kind == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"].keys() == {"groups"}
    out = []
    for group in rule["spec"]["groups"]:
        assert group.keys() == {"name", "rules"}
        out += group["rules"]
    return out


def test_rules_have_the_prometheus_operator_shape(rules: list[dict[str, Any]]):
    assert rules
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= RULE_FIELDS, rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"].keys() == {"summary", "description"}, rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", rule["for"]), rule["alert"]


def test_expressions_are_valid_promql(rules: list[dict[str, Any]]):
    for rule in rules:
        try:
            promql_parser.parse(rule["expr"])
        except ValueError as err:
            pytest.fail(f"{rule['alert']}: {rule['expr']!r} is not PromQL: {err}")


def test_expressions_use_only_exported_metrics(rules: list[dict[str, Any]]):
    known = exported(OperatorMetrics().registry) | exported(VerifierMetrics(dict).registry)
    known.add("up")
    for rule in rules:
        used = set(re.findall(r"\b(sod_[a-z_]+|up)\b(?=\s*[{\[)]|$)", rule["expr"]))
        assert used, rule["alert"]
        assert used <= known, f"{rule['alert']} uses metrics nobody exports: {used - known}"


def test_securevm_conditions_exist(rules: list[dict[str, Any]]):
    conditions = {str(c) for c in ConditionType}
    for rule in rules:
        for condition in re.findall(r'condition="([A-Za-z]+)"', rule["expr"]):
            assert condition in conditions, (rule["alert"], condition)

"""templates/prometheusrule.yaml (structural checks: no schema for the CRD here)."""
import yaml

from conftest import CHART, ci_values, find, one, render, with_minimal


def test_groups_equal_the_rules_file():
    rule = one(render(ci_values("monitoring")), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    source = yaml.safe_load((CHART / "alerts" / "weft-rules.yaml").read_text())
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == source["groups"]
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert r["alert"] and r["expr"]


def test_prometheus_templates_stay_literal():
    rule = one(render(ci_values("monitoring")), "PrometheusRule")
    text = yaml.safe_dump(rule)
    assert "{{ $labels.instance }}" in text


def test_absent_by_default():
    assert not find(render(with_minimal()), "PrometheusRule")

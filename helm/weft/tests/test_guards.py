"""The `fail` guards of templates/_helpers.tpl (weft.validate, weft.terminationGracePeriodSeconds):
impossible values stop the render with a message that names the values to change."""
from __future__ import annotations

import json
import shutil

import helm_python
import pytest

from conftest import CHART, ci_values, merged, render_error, with_minimal


def test_neither_etcd():
    msg = render_error({"catalogs": {}})
    assert "etcd.external.endpoints" in msg and "etcd.bundled.enabled" in msg


def test_both_etcd():
    msg = render_error(with_minimal({"etcd": {"bundled": {"enabled": True}}}))
    assert "etcd.external.endpoints" in msg and "etcd.bundled.enabled" in msg and "both" in msg


def test_bundled_replicas_two(tmp_path):
    values = merged(ci_values("bundled-etcd"), {"etcd": {"bundled": {"replicas": 2}}})
    # The schema's enum stops it first ...
    msg = render_error(values)
    assert "/etcd/bundled/replicas" in msg and "1, 3" in msg
    # ... and the template guard stops it when the schema does not (helm install
    # --skip-schema-validation): render a copy of the chart without the enum.
    copy = tmp_path / "weft"
    shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("tests", "ci"))
    schema = json.loads((copy / "values.schema.json").read_text())
    del schema["properties"]["etcd"]["properties"]["bundled"]["properties"]["replicas"]["enum"]
    (copy / "values.schema.json").write_text(json.dumps(schema))
    with helm_python.Chart.load(str(copy)) as chart:
        with pytest.raises(helm_python.HelmError) as info:
            chart.render(values, name="weft", namespace="weft-test", is_install=True)
    assert "etcd.bundled.replicas is 2" in str(info.value) and "1 or 3" in str(info.value)


def test_hpa_and_keda():
    msg = render_error(merged(ci_values("keda"), {"worker": {
        "autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": "1"}}}}))
    assert "worker.autoscaling.enabled" in msg and "worker.keda.enabled" in msg
    assert "pick one" in msg


def test_keda_without_server_address():
    msg = render_error(with_minimal({"worker": {"keda": {"enabled": True}}}))
    assert "worker.keda.serverAddress" in msg


def test_hpa_without_cpu_request():
    msg = render_error(with_minimal({"worker": {"autoscaling": {"enabled": True}}}))
    assert "worker.resources.requests.cpu" in msg


def test_grace_period_too_short_worker():
    msg = render_error(with_minimal({"worker": {"drainTimeoutSeconds": 120, "preStopSleepSeconds": 5,
                                                "terminationGracePeriodSeconds": 125}}))
    assert "worker.terminationGracePeriodSeconds (125)" in msg
    assert "worker.drainTimeoutSeconds (120)" in msg and "worker.preStopSleepSeconds (5)" in msg


def test_grace_period_too_short_coordinator():
    msg = render_error(with_minimal({"coordinator": {"terminationGracePeriodSeconds": 30}}))
    assert "coordinator.terminationGracePeriodSeconds (30)" in msg
    assert "coordinator.drainTimeoutSeconds (60)" in msg and "coordinator.preStopSleepSeconds (5)" in msg


def test_tls_without_secret():
    msg = render_error(with_minimal({"etcd": {"external": {"tls": {"enabled": True}}}}))
    assert "etcd.external.tls.existingSecret" in msg


def test_auth_without_secret():
    msg = render_error(with_minimal({"etcd": {"external": {"auth": {"username": "weft"}}}}))
    assert "etcd.external.auth.existingSecret" in msg


def test_tls_with_bundled_etcd():
    msg = render_error(merged(ci_values("bundled-etcd"), {"etcd": {"external": {"tls": {
        "enabled": True, "existingSecret": "x"}}}}))
    assert "bundled" in msg


def test_service_monitor_and_pod_monitor():
    msg = render_error(with_minimal({"metrics": {"serviceMonitor": {"enabled": True},
                                                 "podMonitor": {"enabled": True}}}))
    assert "metrics.serviceMonitor.enabled" in msg and "metrics.podMonitor.enabled" in msg

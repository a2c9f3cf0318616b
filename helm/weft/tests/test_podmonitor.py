"""templates/podmonitor.yaml (structural checks: no schema for the CRD here)."""
from _monitor_checks import check_monitor
from conftest import ci_values, find, merged, render, with_minimal


def test_pod_monitors():
    values = merged(ci_values("monitoring"), {"metrics": {
        "serviceMonitor": {"enabled": False},
        "podMonitor": {"enabled": True, "interval": "20s", "labels": {"team": "data"}}}})
    objs = render(values)
    assert not find(objs, "ServiceMonitor")
    check_monitor(objs, "PodMonitor", "podMetricsEndpoints", "Deployment", "20s", {"team": "data"})


def test_absent_by_default():
    assert not find(render(with_minimal()), "PodMonitor")

"""templates/servicemonitor.yaml (structural checks: no schema for the CRD here)."""
from _monitor_checks import check_monitor
from conftest import ci_values, find, render, with_minimal


def test_service_monitors():
    objs = render(ci_values("monitoring"))
    check_monitor(objs, "ServiceMonitor", "endpoints", "Service", "15s",
                  {"release": "kube-prometheus-stack"})


def test_absent_by_default():
    assert not find(render(with_minimal()), "ServiceMonitor")

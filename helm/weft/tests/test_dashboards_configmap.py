"""templates/dashboards-configmap.yaml."""
import json

from conftest import CHART, ci_values, component_name, find, merged, one, render, with_minimal


def test_every_dashboard_lands_in_the_configmap():
    cm = one(render(ci_values("monitoring")), "ConfigMap", component_name("dashboards"))
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    assert len(files) == 4
    assert sorted(cm["data"]) == files
    for name in files:
        assert json.loads(cm["data"][name]) == json.loads((CHART / "dashboards" / name).read_text())


def test_sidecar_label_namespace_and_folder():
    cm = one(render(ci_values("monitoring")), "ConfigMap", component_name("dashboards"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Weft"}
    values = merged(ci_values("monitoring"), {"metrics": {"dashboards": {
        "label": "dashboards", "labelValue": "weft", "namespace": "", "folder": ""}}})
    cm = one(render(values), "ConfigMap", component_name("dashboards"))
    assert cm["metadata"]["labels"]["dashboards"] == "weft"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["namespace"] == "weft-test"
    assert "annotations" not in cm["metadata"]


def test_fits_in_a_configmap():
    cm = one(render(ci_values("monitoring")), "ConfigMap", component_name("dashboards"))
    assert sum(len(v.encode()) for v in cm["data"].values()) < 900 * 1024


def test_absent_by_default():
    assert not find(render(with_minimal()), "ConfigMap", component_name("dashboards"))

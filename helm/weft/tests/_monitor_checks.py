"""ServiceMonitor / PodMonitor are Prometheus Operator custom resources with no schema in
kubernetes-validate; these checks look at their structure and at what they select."""
from __future__ import annotations

from conftest import component_name, deployment, labels_match, one


def check_monitor(objs, kind, endpoints_key, target_kind, interval, labels):
    monitors = [o for o in objs if o["kind"] == kind]
    assert sorted(m["metadata"]["name"] for m in monitors) == [component_name("coordinator"),
                                                               component_name("worker")]
    for component in ("coordinator", "worker"):
        m = one(objs, kind, component_name(component))
        assert m["apiVersion"] == "monitoring.coreos.com/v1"
        for k, v in labels.items():
            assert m["metadata"]["labels"][k] == v
        spec = m["spec"]
        (ep,) = spec[endpoints_key]
        assert ep["port"] == "http" and ep["path"] == "/metrics" and ep["interval"] == interval
        assert spec["namespaceSelector"] == {"matchNames": [m["metadata"]["namespace"]]}
        selector = spec["selector"]["matchLabels"]
        if target_kind == "Service":
            target = one(objs, "Service", component_name(component))
            target_labels = target["metadata"]["labels"]
            assert "http" in {p["name"] for p in target["spec"]["ports"]}
        else:
            target = deployment(objs, component)
            target_labels = target["spec"]["template"]["metadata"]["labels"]
            assert "http" in {p["name"] for p in target["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert labels_match(selector, target_labels)
        # Selects exactly one component.
        other = "worker" if component == "coordinator" else "coordinator"
        if target_kind == "Service":
            other_labels = one(objs, "Service", component_name(other))["metadata"]["labels"]
        else:
            other_labels = deployment(objs, other)["spec"]["template"]["metadata"]["labels"]
        assert not labels_match(selector, other_labels)

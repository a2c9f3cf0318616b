"""Service checks shared by test_coordinator_service.py and test_worker_service.py."""
from __future__ import annotations

from conftest import component_name, deployment, labels_match, one, render, with_minimal


def check_service(component, flight, http):
    objs = render(with_minimal())
    svc = one(objs, "Service", component_name(component))
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert set(ports) == {"flight", "http"}
    assert ports["flight"]["port"] == flight and ports["flight"]["targetPort"] == "flight"
    assert ports["http"]["port"] == http and ports["http"]["targetPort"] == "http"
    d = deployment(objs, component)
    pod_labels = d["spec"]["template"]["metadata"]["labels"]
    assert labels_match(svc["spec"]["selector"], pod_labels)
    # It selects only this component's pods.
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == component
    container_ports = {p["name"] for p in d["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {"flight", "http"} <= container_ports
    return svc

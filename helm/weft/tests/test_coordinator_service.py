"""templates/coordinator-service.yaml."""
from _service_checks import check_service
from conftest import component_name, one, render, with_minimal


def test_ports_and_selector():
    svc = check_service("coordinator", 50050, 51050)
    assert svc["spec"]["type"] == "ClusterIP"


def test_type_and_annotations():
    values = with_minimal({"coordinator": {"service": {"type": "LoadBalancer",
                                                        "annotations": {"lb": "internal"}}}})
    svc = one(render(values), "Service", component_name("coordinator"))
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["metadata"]["annotations"] == {"lb": "internal"}

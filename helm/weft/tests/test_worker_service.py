"""templates/worker-service.yaml."""
from _service_checks import check_service


def test_ports_and_selector():
    svc = check_service("worker", 50051, 51051)
    assert svc["spec"]["type"] == "ClusterIP"

"""templates/NOTES.txt."""
from conftest import ci_values, manifests, with_minimal


def notes(values):
    return manifests(values)["weft/templates/NOTES.txt"]


def test_how_to_connect():
    text = notes(with_minimal())
    assert "kubectl -n weft-test port-forward service/weft-coordinator 50050:50050" in text
    assert "weft sql --url grpc://127.0.0.1:50050" in text
    assert "adbc_driver_flightsql" in text
    assert "/metrics" in text and "51050" in text
    assert "worker.replicas" in text


def test_mentions_the_autoscaler():
    assert "get hpa weft-worker" in notes(ci_values("hpa"))
    assert "get scaledobject weft-worker" in notes(ci_values("keda"))

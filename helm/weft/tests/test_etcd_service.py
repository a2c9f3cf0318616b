"""templates/etcd-service.yaml (headless Service of the bundled etcd)."""
from conftest import ci_values, container, find, labels_match, one, render, with_minimal


def test_headless_service_selects_etcd_pods():
    objs = render(ci_values("bundled-etcd"))
    svc = one(objs, "Service", "weft-etcd-headless")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"client": 2379, "peer": 2380}
    sts = one(objs, "StatefulSet", "weft-etcd")
    assert labels_match(svc["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "etcd"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    # The Weft Services do not select etcd pods, nor the other way round.
    for other in find(objs, "Service"):
        if other is not svc:
            assert not labels_match(other["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])


def test_absent_with_external_etcd():
    assert not find(render(with_minimal()), "Service", "weft-etcd-headless")

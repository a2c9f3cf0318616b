"""templates/etcd-statefulset.yaml (the bundled etcd)."""
from conftest import ci_values, container, find, flags, merged, one, render, with_minimal


def sts(values=None):
    objs = render(values or ci_values("bundled-etcd"))
    return objs, one(objs, "StatefulSet", "weft-etcd")


def test_three_members_form_one_cluster():
    _, s = sts()
    assert s["spec"]["replicas"] == 3
    assert s["spec"]["podManagementPolicy"] == "Parallel"
    assert s["spec"]["serviceName"] == "weft-etcd-headless"
    c = container(s)
    assert c["command"] == ["/usr/local/bin/etcd"]
    f = flags(c)
    domain = "weft-etcd-headless.weft-test.svc"
    assert f["initial-cluster"] == ",".join(
        f"weft-etcd-{i}=http://weft-etcd-{i}.{domain}:2380" for i in range(3))
    assert f["name"] == "$(POD_NAME)"
    assert f["initial-advertise-peer-urls"] == f"http://$(POD_NAME).{domain}:2380"
    assert f["advertise-client-urls"] == f"http://$(POD_NAME).{domain}:2379"
    assert f["listen-client-urls"] == "http://0.0.0.0:2379"
    assert f["listen-peer-urls"] == "http://0.0.0.0:2380"
    assert f["initial-cluster-state"] == "new"
    assert f["data-dir"].startswith("/var/lib/etcd/")
    pod_name = next(e for e in c["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_single_member():
    _, s = sts(merged(ci_values("bundled-etcd"), {"etcd": {"bundled": {"replicas": 1}}}))
    assert s["spec"]["replicas"] == 1
    assert flags(container(s))["initial-cluster"].count("=http://") == 1


def test_official_image():
    _, s = sts()
    image = container(s)["image"]
    assert image.split(":")[0] in ("quay.io/coreos/etcd", "registry.k8s.io/etcd", "gcr.io/etcd-development/etcd")
    assert not image.endswith(":latest")


def test_persistence():
    _, s = sts()
    (claim,) = s["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    mount = container(s)["volumeMounts"][0]
    assert mount["name"] == "data" and mount["mountPath"] == "/var/lib/etcd"
    # storageClass null: field left out (cluster default).
    _, s = sts(merged(ci_values("bundled-etcd"), {"etcd": {"bundled": {"persistence": {"storageClass": None}}}}))
    assert "storageClassName" not in s["spec"]["volumeClaimTemplates"][0]["spec"]
    # Disabled: emptyDir.
    _, s = sts(merged(ci_values("bundled-etcd"), {"etcd": {"bundled": {"persistence": {"enabled": False}}}}))
    assert "volumeClaimTemplates" not in s["spec"]
    assert s["spec"]["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]


def test_security_context_and_probes():
    _, s = sts()
    pod = s["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["fsGroup"] == 10001
    c = container(s)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == "metrics"
        assert c[probe]["httpGet"]["path"].startswith("/health")
    assert flags(c)["listen-metrics-urls"] == "http://0.0.0.0:2381"


def test_absent_with_external_etcd():
    assert not find(render(with_minimal()), "StatefulSet")

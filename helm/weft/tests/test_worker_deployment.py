"""templates/worker-deployment.yaml."""
from __future__ import annotations

import _deployment_checks as checks
from conftest import ci_values, container, deployment, env, flags, render, with_minimal

W = "worker"


def test_command_ports_listen_and_advertise():
    c = container(deployment(render(with_minimal()), W))
    assert c["command"] == ["/usr/local/bin/weft-worker"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"flight": 50051, "http": 51051}
    f = flags(c)
    assert f["listen"] == "0.0.0.0:50051" and f["http-listen"] == "0.0.0.0:51051"
    assert f["advertise"] == "$(POD_IP):50051"
    # POD_IP is defined before use ($(VAR) expansion) and comes from the downward API.
    assert env(c)["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_unset_flags_are_not_passed():
    f = flags(container(deployment(render(with_minimal()), W)))
    assert set(f) == {"listen", "advertise", "http-listen", "etcd", "catalogs", "drain-timeout",
                      "cluster-secret-file"}


def test_worker_flags_from_values():
    f = flags(container(deployment(render(ci_values("external-etcd")), W)))
    assert f["slots"] == "4" and f["memory-limit"] == "6G" and f["lease-ttl"] == "10"
    assert f["max-queries"] == "8"
    assert "trace-operators" not in f
    f = flags(container(deployment(render(ci_values("monitoring")), W)))
    assert "trace-operators" in f and f["trace-operators"] is None


def test_replicas_without_autoscaling():
    assert deployment(render(with_minimal()), W)["spec"]["replicas"] == 2
    assert deployment(render(ci_values("external-etcd")), W)["spec"]["replicas"] == 3


def test_no_replicas_when_autoscaled():
    for name in ("hpa", "keda"):
        assert "replicas" not in deployment(render(ci_values(name)), W)["spec"], name


def test_default_topology_spread():
    pod = deployment(render(with_minimal()), W)["spec"]["template"]["spec"]
    (tsc,) = pod["topologySpreadConstraints"]
    assert tsc["topologyKey"] == "kubernetes.io/hostname"
    assert tsc["whenUnsatisfiable"] == "ScheduleAnyway"
    assert tsc["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    custom = [{"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone",
               "whenUnsatisfiable": "DoNotSchedule",
               "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "worker"}}}]
    pod = deployment(render(with_minimal({W: {"topologySpreadConstraints": custom}})), W)["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"] == custom


def test_security_context():
    checks.check_security_context(W)


def test_probes():
    checks.check_probes(W, 51051)


def test_tmp_and_catalogs():
    checks.check_tmp_and_catalogs(W)


def test_grace_period():
    checks.check_grace_period(W, 120)


def test_hpa_values_grace_period():
    d = deployment(render(ci_values("hpa")), W)
    assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 330
    assert flags(container(d))["drain-timeout"] == "300"


def test_external_etcd_tls_and_auth():
    checks.check_external_etcd_tls_and_auth(W)


def test_bundled_etcd_endpoints():
    checks.check_bundled_etcd_endpoints(W)


def test_env_and_args_layering():
    checks.check_env_and_args_layering(W)


def test_labels():
    checks.check_labels(W)

"""templates/coordinator-deployment.yaml."""
from __future__ import annotations

import pytest

import _deployment_checks as checks
from conftest import ci_values, container, deployment, env, flags, render, with_minimal

C = "coordinator"


def test_command_ports_and_listen():
    c = container(deployment(render(with_minimal()), C))
    assert c["command"] == ["/usr/local/bin/weft-coordinator"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"flight": 50050, "http": 51050}
    f = flags(c)
    assert f["listen"] == "0.0.0.0:50050" and f["http-listen"] == "0.0.0.0:51050"
    assert f["etcd"] == "http://etcd.weft-deps.svc:2379"


def test_unset_flags_are_not_passed():
    f = flags(container(deployment(render(with_minimal()), C)))
    assert set(f) == {"listen", "http-listen", "etcd", "catalogs", "drain-timeout",
                      "cluster-secret-file", "password-file"}


def test_query_limits_from_values():
    values = with_minimal({C: {"maxRunningQueries": 0, "maxQueuedQueries": 50, "queueTimeoutSeconds": 30,
                               "resultTimeoutSeconds": 600, "targetPartitions": 16,
                               "taskLeaseSeconds": 20, "queryRetries": 0,
                               "retryBuffer": "64M", "retryHold": "500ms",
                               "exchangeCompression": "zstd"}})
    f = flags(container(deployment(render(values), C)))
    assert f["max-running-queries"] == "0"  # 0 is a value (no limit), not "unset"
    assert f["max-queued-queries"] == "50"
    assert f["queue-timeout"] == "30"
    assert f["result-timeout"] == "600"
    assert f["task-lease"] == "20"
    assert f["query-retries"] == "0"  # 0 is a value (never retry), not "unset"
    assert f["retry-buffer"] == "64M"
    assert f["retry-hold"] == "500ms"
    assert f["target-partitions"] == "16"
    assert f["exchange-compression"] == "zstd"


def test_replicas():
    assert deployment(render(with_minimal()), C)["spec"]["replicas"] == 1
    assert deployment(render(ci_values("keda")), C)["spec"]["replicas"] == 2


def test_coordinator_has_no_worker_flags():
    f = flags(container(deployment(render(ci_values("external-etcd")), C)))
    assert not {"advertise", "slots", "memory-limit", "lease-ttl", "trace-operators"} & set(f)


def test_security_context():
    checks.check_security_context(C)


def test_probes():
    checks.check_probes(C, 51050)


def test_tmp_and_catalogs():
    checks.check_tmp_and_catalogs(C)


def test_grace_period():
    checks.check_grace_period(C, 60)


def test_external_etcd_tls_and_auth():
    checks.check_external_etcd_tls_and_auth(C)


def test_bundled_etcd_endpoints():
    checks.check_bundled_etcd_endpoints(C)


def test_env_and_args_layering():
    checks.check_env_and_args_layering(C)


def test_labels():
    checks.check_labels(C)


def test_rolling_update_keeps_capacity():
    d = deployment(render(with_minimal()), C)
    assert d["spec"]["strategy"] == {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}

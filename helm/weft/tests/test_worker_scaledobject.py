"""templates/worker-scaledobject.yaml. ScaledObject is a KEDA custom resource, with no schema in
kubernetes-validate: this file checks its structure (apiVersion, kind, required spec fields, the
target) instead."""
from conftest import NAMESPACE, ci_values, deployment, find, one, render, with_minimal


def scaled_object(values=None):
    objs = render(values or ci_values("keda"))
    return objs, one(objs, "ScaledObject")


def test_structure_and_target():
    objs, so = scaled_object()
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert set(so["metadata"]) >= {"name", "namespace", "labels"}
    spec = so["spec"]
    worker = deployment(objs, "worker")
    assert spec["scaleTargetRef"] == {"apiVersion": worker["apiVersion"], "kind": "Deployment",
                                      "name": worker["metadata"]["name"]}
    assert "replicas" not in worker["spec"]
    assert spec["minReplicaCount"] == 2 and spec["maxReplicaCount"] == 12
    assert isinstance(spec["pollingInterval"], int)
    down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300


def test_prometheus_triggers_on_weft_metrics():
    _, so = scaled_object()
    triggers = {t["name"]: t for t in so["spec"]["triggers"]}
    assert set(triggers) == {"queued-queries", "slot-utilization"}
    for t in triggers.values():
        assert t["type"] == "prometheus"
        md = t["metadata"]
        assert md["serverAddress"] == "http://prometheus-operated.monitoring.svc:9090"
        # KEDA's metadata values are strings.
        assert all(isinstance(v, str) for v in md.values())
        assert float(md["threshold"]) > 0
    queued = triggers["queued-queries"]
    assert queued["metricType"] == "AverageValue"
    assert queued["metadata"]["query"] == f'sum(weft_coordinator_queries_queued{{namespace="{NAMESPACE}"}})'
    slots = triggers["slot-utilization"]
    assert slots["metricType"] == "Value"
    q = slots["metadata"]["query"]
    assert q.startswith("sum(weft_coordinator_slots_used{") and "weft_coordinator_slots{" in q
    assert slots["metadata"]["threshold"] == "0.8"


def test_selector_and_authentication_override():
    values = ci_values("keda")
    values["worker"]["keda"].update({"metricSelector": 'job="weft"', "authenticationRef": "prom-auth",
                                     "queuedQueriesPerWorker": 5})
    _, so = scaled_object(values)
    for t in so["spec"]["triggers"]:
        assert 'job="weft"' in t["metadata"]["query"] and "namespace=" not in t["metadata"]["query"]
        assert t["authenticationRef"] == {"name": "prom-auth"}
    queued = next(t for t in so["spec"]["triggers"] if t["name"] == "queued-queries")
    assert queued["metadata"]["threshold"] == "5"


def test_absent_by_default():
    assert not find(render(with_minimal()), "ScaledObject")
    assert not find(render(ci_values("hpa")), "ScaledObject")

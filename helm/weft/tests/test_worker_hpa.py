"""templates/worker-hpa.yaml."""
from conftest import ci_values, component_name, deployment, find, one, render, with_minimal


def test_targets_the_worker_deployment():
    objs = render(ci_values("hpa"))
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    worker = deployment(objs, "worker")
    ref = hpa["spec"]["scaleTargetRef"]
    assert ref == {"apiVersion": worker["apiVersion"], "kind": "Deployment",
                   "name": worker["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 20
    assert "replicas" not in worker["spec"]


def test_metrics():
    hpa = one(render(ci_values("hpa")), "HorizontalPodAutoscaler")
    targets = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
    assert targets == {"cpu": {"type": "Utilization", "averageUtilization": 75},
                       "memory": {"type": "Utilization", "averageUtilization": 80}}
    values = ci_values("hpa")
    values["worker"]["autoscaling"]["targetMemoryUtilizationPercentage"] = None
    hpa = one(render(values), "HorizontalPodAutoscaler")
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_slow_scale_down_by_default():
    behavior = one(render(ci_values("hpa")), "HorizontalPodAutoscaler")["spec"]["behavior"]
    down = behavior["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 180}]


def test_absent_by_default():
    assert not find(render(with_minimal()), "HorizontalPodAutoscaler")
    assert not find(render(ci_values("keda")), "HorizontalPodAutoscaler")  # KEDA makes its own

"""templates/worker-pdb.yaml."""
from conftest import component_name, deployment, find, labels_match, one, render, with_minimal


def test_default_pdb():
    objs = render(with_minimal())
    pdb = one(objs, "PodDisruptionBudget", component_name("worker"))
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    pod_labels = deployment(objs, "worker")["spec"]["template"]["metadata"]["labels"]
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"


def test_configurable():
    objs = render(with_minimal({"worker": {"podDisruptionBudget": {"maxUnavailable": "25%"}}}))
    assert one(objs, "PodDisruptionBudget", component_name("worker"))["spec"]["maxUnavailable"] == "25%"
    objs = render(with_minimal({"worker": {"podDisruptionBudget": {"enabled": False}}}))
    assert not find(objs, "PodDisruptionBudget")

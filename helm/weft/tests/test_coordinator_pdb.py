"""templates/coordinator-pdb.yaml: only when there is more than one coordinator."""
from conftest import ci_values, component_name, deployment, find, labels_match, render, with_minimal


def test_no_pdb_for_a_single_coordinator():
    assert not find(render(with_minimal()), "PodDisruptionBudget", component_name("coordinator"))


def test_pdb_with_two_coordinators():
    objs = render(ci_values("keda"))
    (pdb,) = find(objs, "PodDisruptionBudget", component_name("coordinator"))
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = deployment(objs, "coordinator")["spec"]["template"]["metadata"]["labels"]
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels)


def test_pdb_can_be_disabled():
    values = with_minimal({"coordinator": {"replicas": 3, "podDisruptionBudget": {"enabled": False}}})
    assert not find(render(values), "PodDisruptionBudget", component_name("coordinator"))

"""templates/serviceaccount.yaml."""
from conftest import deployment, find, one, render, with_minimal


def test_created_and_used():
    objs = render(with_minimal({"serviceAccount": {"annotations": {"iam": "role"}}}))
    sa = one(objs, "ServiceAccount")
    assert sa["metadata"]["name"] == "weft"
    assert sa["metadata"]["annotations"] == {"iam": "role"}
    assert sa["automountServiceAccountToken"] is False
    for component in ("coordinator", "worker"):
        assert deployment(objs, component)["spec"]["template"]["spec"]["serviceAccountName"] == "weft"


def test_existing_account():
    objs = render(with_minimal({"serviceAccount": {"create": False, "name": "data-reader"}}))
    assert not find(objs, "ServiceAccount")
    for component in ("coordinator", "worker"):
        assert deployment(objs, component)["spec"]["template"]["spec"]["serviceAccountName"] == "data-reader"

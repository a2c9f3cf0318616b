"""security.*: the cluster secret every node signs internal calls with, client authentication of
the coordinator (password file, JWT), admins, and the refusal to serve exposed without either."""
from __future__ import annotations

from conftest import (RELEASE, container, deployment, find, flags, render, render_error,
                      with_minimal)

C, W = "coordinator", "worker"
OPEN = {"security": {"auth": {"passwordFile": {"existingSecret": ""}}}}


def mounts(c):
    return {m["name"]: m for m in c.get("volumeMounts", [])}


def volumes(d):
    return {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}


def test_no_authentication_and_not_insecure_fails_naming_the_values():
    msg = render_error(with_minimal(OPEN))
    for name in ("security.auth.passwordFile.existingSecret", "security.auth.jwt.existingSecret",
                 "security.insecure=true", "weft passwd"):
        assert name in msg, msg


def test_insecure_passes_the_flag_to_the_coordinator_only():
    objs = render(with_minimal(OPEN, {"security": {"insecure": True}}))
    assert "insecure" in flags(container(deployment(objs, C)))
    assert "insecure" not in flags(container(deployment(objs, W)))
    assert "password-file" not in flags(container(deployment(objs, C)))


def test_insecure_with_authentication_fails():
    msg = render_error(with_minimal({"security": {"insecure": True}}))
    assert "drop security.insecure" in msg, msg


def test_password_file_is_a_directory_mount_so_updates_reach_the_pod():
    objs = render(with_minimal({"security": {"auth": {"passwordFile": {"key": "users"}}}}))
    d = deployment(objs, C)
    c = container(d)
    assert flags(c)["password-file"] == "/etc/weft/auth/passwords/users"
    m = mounts(c)["passwords"]
    assert m["mountPath"] == "/etc/weft/auth/passwords" and m["readOnly"] is True
    assert "subPath" not in m
    assert volumes(d)["passwords"]["secret"]["secretName"] == "weft-passwords"
    assert "passwords" not in mounts(container(deployment(objs, W)))


def test_jwt_key_or_jwks_with_issuer_audience_claim_and_admins():
    values = with_minimal(OPEN, {"security": {"auth": {
        "jwt": {"existingSecret": "idp", "issuer": "https://idp", "audience": "weft"},
        "adminUsers": ["ops", "dba"]}}})
    c = container(deployment(render(values), C))
    f = flags(c)
    assert f["jwt-key-file"] == "/etc/weft/auth/jwt/jwt.key"
    assert f["jwt-issuer"] == "https://idp" and f["jwt-audience"] == "weft"
    assert f["jwt-user-claim"] == "sub"
    assert f["admin-user"] == "ops,dba"
    values["security"]["auth"]["jwt"]["jwks"] = True
    f = flags(container(deployment(render(values), C)))
    assert f["jwt-jwks-file"] == "/etc/weft/auth/jwt/jwt.key" and "jwt-key-file" not in f


def test_every_node_gets_the_cluster_secret():
    objs = render(with_minimal())
    (secret,) = find(objs, "Secret")
    assert secret["metadata"]["name"] == f"{RELEASE}-cluster-secret"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(secret["data"]["cluster-secret"]) >= 64
    for component in (C, W):
        d = deployment(objs, component)
        c = container(d)
        assert flags(c)["cluster-secret-file"] == "/etc/weft/cluster-secret/cluster-secret"
        assert mounts(c)["cluster-secret"]["mountPath"] == "/etc/weft/cluster-secret"
        assert volumes(d)["cluster-secret"]["secret"]["secretName"] == f"{RELEASE}-cluster-secret"


def test_an_operator_made_cluster_secret_replaces_the_charts():
    objs = render(with_minimal({"security": {"clusterSecret": {"existingSecret": "mine",
                                                               "key": "s"}}}))
    assert not find(objs, "Secret")
    for component in (C, W):
        d = deployment(objs, component)
        assert flags(container(d))["cluster-secret-file"] == "/etc/weft/cluster-secret/s"
        assert volumes(d)["cluster-secret"]["secret"]["secretName"] == "mine"


def test_schema_refuses_a_password_value():
    msg = render_error(with_minimal({"security": {"auth": {"password": "hunter2"}}}))
    assert "password" in msg

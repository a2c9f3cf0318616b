"""templates/access-rules-configmap.yaml and security.accessRules: the rules file as a ConfigMap
mounted into the coordinator only, as a directory (so an upgrade reaches the running pod, which
re-reads the file), or an operator's ConfigMap instead."""
from __future__ import annotations

import tomllib

from conftest import (RELEASE, component_name, container, deployment, find, flags, render,
                      render_error, with_minimal)

RULES = """[groups]
analysts = ["alice", "bob"]

[[tables]]
catalog = "system"
allow = true

[[tables]]
group = "analysts"
catalog = "pg"
table = "accounts"
allow = true
row_filter = "owner = current_user"
columns = [{ name = "ssn", allow = false }, { name = "email", mask = "'***'" }]
"""


def mounts(c):
    return {m["name"]: m for m in c.get("volumeMounts", [])}


def volumes(d):
    return {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}


def test_no_rules_no_configmap_no_flag():
    objs = render(with_minimal())
    assert not find(objs, "ConfigMap", component_name("access-rules"))
    for component in ("coordinator", "worker"):
        c = container(deployment(objs, component))
        assert "access-rules-file" not in flags(c)
        assert "access-rules" not in mounts(c)


def test_inline_rules_become_a_configmap_mounted_as_a_directory():
    objs = render(with_minimal({"security": {"accessRules": {"rules": RULES}}}))
    (cm,) = find(objs, "ConfigMap", component_name("access-rules"))
    assert cm["metadata"]["name"] == f"{RELEASE}-access-rules"
    parsed = tomllib.loads(cm["data"]["rules.toml"])
    assert parsed == tomllib.loads(RULES)
    d = deployment(objs, "coordinator")
    c = container(d)
    assert flags(c)["access-rules-file"] == "/etc/weft/access/rules.toml"
    m = mounts(c)["access-rules"]
    assert m["mountPath"] == "/etc/weft/access" and m["readOnly"] is True
    assert "subPath" not in m, "a subPath mount never sees an updated ConfigMap"
    assert volumes(d)["access-rules"]["configMap"]["name"] == f"{RELEASE}-access-rules"
    w = container(deployment(objs, "worker"))
    assert "access-rules-file" not in flags(w) and "access-rules" not in mounts(w)


def test_an_operators_configmap_is_mounted_instead():
    objs = render(with_minimal({"security": {"accessRules": {
        "existingConfigMap": "team-rules", "key": "weft.toml"}}}))
    assert not find(objs, "ConfigMap", component_name("access-rules"))
    d = deployment(objs, "coordinator")
    assert flags(container(d))["access-rules-file"] == "/etc/weft/access/weft.toml"
    assert volumes(d)["access-rules"]["configMap"]["name"] == "team-rules"


def test_both_inline_and_existing_fails_naming_the_values():
    msg = render_error(with_minimal({"security": {"accessRules": {
        "rules": RULES, "existingConfigMap": "team-rules"}}}))
    assert "security.accessRules.rules" in msg and "security.accessRules.existingConfigMap" in msg

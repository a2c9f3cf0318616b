"""templates/catalogs-configmap.yaml: the catalog file, its round trip through TOML, the
checksum annotation that rolls the pods."""
from __future__ import annotations

import tomllib

import pytest

from conftest import CI_FILES, ci_values, component_name, deployment, one, render, render_error, with_minimal


def catalogs_toml(objs):
    cm = one(objs, "ConfigMap", component_name("catalogs"))
    return tomllib.loads(cm["data"]["catalogs.toml"])


@pytest.mark.parametrize("name", CI_FILES)
def test_toml_equals_values(name):
    values = ci_values(name)
    parsed = catalogs_toml(render(values))
    assert parsed.get("catalogs", {}) == values.get("catalogs", {})
    assert parsed.get("default_catalog") == (values.get("defaultCatalog") or None)
    assert set(parsed) <= {"catalogs", "default_catalog"}


def test_numbers_stay_integers_and_odd_keys_are_quoted():
    catalogs = {
        "pg": {"kind": "postgres", "url": "postgresql://u:${ENV:PW}@h:5432/d", "pool_size": 4,
               "string_range_pushdown": False,
               "tables": {"public.events": {"split_column": "id", "splits": 8}}},
        "odd name": {"kind": "files", "path": "/data/a \"quoted\" \\ path", "format": "csv",
                     "ratio": 0.25, "list": [1, "two", True]},
    }
    parsed = catalogs_toml(render(with_minimal({"catalogs": catalogs, "defaultCatalog": "pg"})))
    assert parsed["catalogs"]["pg"] == catalogs["pg"] | {}  # ints are ints, not 4.0
    assert isinstance(parsed["catalogs"]["pg"]["pool_size"], int)
    assert parsed["catalogs"]["pg"]["tables"]["public.events"]["splits"] == 8
    assert parsed["catalogs"]["odd name"] == catalogs["odd name"]
    assert parsed["default_catalog"] == "pg"


def test_env_references_stay_literal():
    cm_text = one(render(ci_values("external-etcd")), "ConfigMap", component_name("catalogs"))["data"]["catalogs.toml"]
    assert "${ENV:CUSTOMERS_PW}" in cm_text and "${ENV:LAKE_SECRET}" in cm_text


def test_empty_catalogs_is_a_valid_file():
    values = with_minimal({"catalogs": None, "defaultCatalog": ""})
    parsed = catalogs_toml(render(values))
    assert parsed.get("catalogs", {}) == {}
    assert "default_catalog" not in parsed


def test_checksum_changes_when_catalogs_change():
    def checksums(values):
        objs = render(values)
        return {c: deployment(objs, c)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for c in ("coordinator", "worker")}

    base = checksums(with_minimal())
    assert base == checksums(with_minimal())  # stable
    changed = checksums(with_minimal({"catalogs": {"tpch": {"path": "/data/tpch-sf10"}}}))
    added = checksums(with_minimal({"catalogs": {"other": {"kind": "files", "path": "/x"}}}))
    for component in ("coordinator", "worker"):
        assert len(base[component]) == 64
        assert changed[component] != base[component]
        assert added[component] != base[component]


def test_default_catalog_must_exist():
    msg = render_error(with_minimal({"defaultCatalog": "nope"}))
    assert "defaultCatalog" in msg and "catalogs.nope" in msg


def test_catalog_kind_is_checked_by_schema():
    msg = render_error(with_minimal({"catalogs": {"x": {"kind": "oracle", "url": "u"}}}))
    assert "kind" in msg

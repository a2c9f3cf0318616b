"""Whole-chart checks over the CI values matrix (helm/weft/ci/*.yaml): Helm lint, Kubernetes
schema validation, no secret values, drain vs grace period, the render.py CLI, schema typos,
documentation of every value."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib

import helm_python
import kubernetes_validate
import pytest
import yaml

from conftest import (RELEASE, CHART, CI, CI_FILES, CRD_KINDS, KUBE_VERSION, REPO, TESTS, chart_defaults,
                      ci_values, container, deployment, env, flags, render, with_minimal)

EXPECTED_CI = {"minimal", "external-etcd", "bundled-etcd", "hpa", "keda", "monitoring"}


def test_ci_matrix_is_complete():
    assert EXPECTED_CI <= set(CI_FILES)


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "weft"
    with open(REPO / "Cargo.toml", "rb") as f:
        cargo = tomllib.load(f)
    assert chart["appVersion"] == cargo["workspace"]["package"]["version"]


def test_helmignore_excludes_tests_ci_and_promtool_tests():
    lines = {l.strip() for l in (CHART / ".helmignore").read_text().splitlines()}
    assert {"tests/", "ci/", "alerts/weft-rules.test.yaml"} <= lines
    # Helm's loader applies it: the packaged chart carries the rules and dashboards only.
    with helm_python.Chart.load(str(CHART)) as chart:
        names = [f["name"] for f in chart.files]
    assert "alerts/weft-rules.yaml" in names
    assert sum(n.startswith("dashboards/") and n.endswith(".json") for n in names) == 4
    assert not [n for n in names if n.startswith(("tests/", "ci/")) or n.endswith(".test.yaml")]


@pytest.mark.parametrize("name", CI_FILES)
def test_lint_strict_is_clean(name):
    report = helm_python.lint(str(CHART), ci_values(name), strict=True,
                              kube_version=f"v{KUBE_VERSION}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems
    assert not report["errors"], report["errors"]


@pytest.mark.parametrize("name", CI_FILES)
def test_every_object_is_valid_kubernetes(name):
    objs = render(ci_values(name))
    assert objs
    for obj in objs:
        if obj["kind"] in CRD_KINDS:
            # No schema in kubernetes-validate; checked structurally in test_servicemonitor.py,
            # test_podmonitor.py, test_prometheusrule.py and test_worker_scaledobject.py.
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            continue
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("name", CI_FILES)
def test_names_are_unique_per_kind(name):
    seen = set()
    for obj in render(ci_values(name)):
        key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        assert key not in seen, key
        seen.add(key)


@pytest.mark.parametrize("name", CI_FILES)
def test_drain_fits_in_grace_period(name):
    objs = render(ci_values(name))
    for component in ("coordinator", "worker"):
        d = deployment(objs, component)
        spec = d["spec"]["template"]["spec"]
        c = container(d)
        drain = int(flags(c)["drain-timeout"])
        sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert drain < spec["terminationGracePeriodSeconds"] - sleep, (component, drain, sleep)


SECRETISH_NAME = re.compile(r"pass|secret|token|credential|private|api_?key|access_?key", re.I)
SENTINEL = "Sentinel-Pa55word-9f1c"


@pytest.mark.parametrize("name", CI_FILES)
def test_no_secret_values_rendered(name):
    values = ci_values(name)
    objs = render(values)
    # The one Secret the chart makes is the cluster secret, with a value it generates (never one
    # from the values), and only when the operator does not bring their own.
    secrets = [o for o in objs if o["kind"] == "Secret"]
    if values.get("security", {}).get("clusterSecret", {}).get("existingSecret"):
        assert not secrets
    else:
        assert [s["metadata"]["name"] for s in secrets] == [f"{RELEASE}-cluster-secret"]
        again = [o for o in render(values) if o["kind"] == "Secret"]
        assert secrets[0]["data"] != again[0]["data"], "the cluster secret must be random"
    for obj in objs:
        spec = obj.get("spec", {}).get("template", {}).get("spec")
        if not spec:
            continue
        for c in spec["containers"]:
            for e in c.get("env", []):
                if "value" in e and SECRETISH_NAME.search(e["name"]):
                    pytest.fail(f"{obj['metadata']['name']}: env {e['name']} has a literal value")
    # Every password in a catalog URL is an ${ENV:...} reference.
    for obj in objs:
        for text in (obj.get("data") or {}).values():
            for m in re.finditer(r"://[^/:@\s]+:([^@\s]+)@", text):
                assert m.group(1).startswith("${ENV:"), m.group(0)


def test_env_references_are_never_expanded(monkeypatch):
    # Even with the variable set in the rendering environment, the chart writes the reference,
    # not the value: the value only exists in the pod, from the Secret.
    monkeypatch.setenv("WEFT_SENTINEL_PW", SENTINEL)
    values = with_minimal({
        "existingSecret": "weft-db-credentials",
        "catalogs": {"db": {"kind": "postgres",
                            "url": "postgresql://app:${ENV:WEFT_SENTINEL_PW}@pg:5432/app"}},
    })
    text = json.dumps(render(values))
    assert SENTINEL not in text
    assert "${ENV:WEFT_SENTINEL_PW}" in text


def test_typo_in_values_fails_schema():
    with pytest.raises(helm_python.HelmError) as info:
        render(with_minimal({"worker": {"drainTimeoutSecond": 30}}))
    assert "drainTimeoutSecond" in str(info.value)
    with pytest.raises(helm_python.HelmError) as info:
        render(with_minimal({"etcd": {"external": {"tls": {"enable": True}}}}))
    assert "enable" in str(info.value)
    with pytest.raises(helm_python.HelmError):
        render(with_minimal({"coordinator": {"exchangeCompression": "gzip"}}))
    with pytest.raises(helm_python.HelmError):
        render(with_minimal({"coordinator": {"replicas": "two"}}))


def test_schema_rejects_unknown_keys_at_every_defined_level():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"

    def walk(node, path, defaults):
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, path
            # Every key of values.yaml is in the schema, and the other way round.
            if isinstance(defaults, dict):
                assert set(defaults) == set(node["properties"]), path
            for key, sub in node["properties"].items():
                walk(sub, f"{path}.{key}", (defaults or {}).get(key) if isinstance(defaults, dict) else None)

    walk(schema, "", chart_defaults())
    with helm_python.Chart.load(str(CHART)) as chart:
        chart.validate_schema(chart_defaults())


def leaf_keys(node, prefix=""):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaf_keys(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def test_every_value_is_documented():
    doc = (REPO / "docs" / "kubernetes.md").read_text()
    defaults = chart_defaults()
    # Kubernetes objects given as defaults (securityContext, probes' behavior, resources) are
    # documented as a whole; their inner keys are Kubernetes' own.
    opaque = {"podSecurityContext", "securityContext", "coordinator.updateStrategy",
              "worker.updateStrategy", "worker.autoscaling.behavior", "worker.keda.behavior",
              "etcd.bundled.resources"}
    missing = []
    for key in leaf_keys(defaults):
        documented = next((o for o in opaque if key == o or key.startswith(o + ".")), key)
        if f"`{documented}`" not in doc:
            missing.append(documented)
    assert not missing, f"not in docs/kubernetes.md: {sorted(set(missing))}"


def run_cli(*args):
    return subprocess.run([sys.executable, str(TESTS / "render.py"), *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def test_render_cli_prints_a_json_array_of_objects():
    # An operator-made cluster secret: the chart's own would be random on every render.
    own = '{"security": {"clusterSecret": {"existingSecret": "weft-cluster"}}}'
    out = run_cli("-f", str(CI / "minimal.yaml"), "--set-json", '{"worker": {"replicas": 4}}',
                  "--set-json", "coordinator.replicas=3", "--set-json", own, "--name", "cli")
    assert out.returncode == 0, out.stderr
    objs = json.loads(out.stdout)
    assert isinstance(objs, list) and objs
    assert all(isinstance(o, dict) and o.get("kind") and o.get("apiVersion") for o in objs)
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    assert by_name[("Deployment", "cli-weft-worker")]["spec"]["replicas"] == 4
    assert by_name[("Deployment", "cli-weft-coordinator")]["spec"]["replicas"] == 3
    # Stable: the same input gives byte-identical output.
    assert run_cli("-f", str(CI / "minimal.yaml"), "--set-json", '{"worker": {"replicas": 4}}',
                   "--set-json", "coordinator.replicas=3", "--set-json", own,
                   "--name", "cli").stdout == out.stdout


def test_render_cli_layers_values_files_in_order(tmp_path):
    extra = tmp_path / "more.yaml"
    extra.write_text("worker:\n  slots: 6\n")
    out = run_cli("-f", str(CI / "external-etcd.yaml"), "-f", str(extra), "--name", "weft")
    assert out.returncode == 0, out.stderr
    worker = next(o for o in json.loads(out.stdout)
                  if o["kind"] == "Deployment" and o["metadata"]["name"] == "weft-worker")
    f = flags(container(worker))
    assert f["slots"] == "6" and f["memory-limit"] == "6G"  # later file wins, earlier keys stay


def test_render_cli_fails_with_helms_message():
    out = run_cli("--name", "weft")
    assert out.returncode != 0
    assert out.stdout == ""
    assert "etcd.external.endpoints" in out.stderr and "etcd.bundled.enabled" in out.stderr

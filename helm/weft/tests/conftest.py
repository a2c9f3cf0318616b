"""Shared helpers of the chart tests: render the chart with Helm's own engine (helm-python-sdk),
pick objects, parse container flags."""
from __future__ import annotations

import copy
import pathlib
import sys
from typing import Any

import pytest
import yaml

TESTS = pathlib.Path(__file__).resolve().parent
CHART = TESTS.parent
CI = CHART / "ci"
REPO = CHART.parent.parent
sys.path.insert(0, str(TESTS))

import render as _render  # noqa: E402

# Kubernetes version the manifests are validated against (kubernetes-validate's schemas).
KUBE_VERSION = "1.33"
RELEASE = "weft"
NAMESPACE = "weft-test"
CI_FILES = sorted(p.stem for p in CI.glob("*.yaml"))
# Custom resources: kubernetes-validate has no schema for them, so their own test files check
# them structurally.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject"}


def ci_values(name: str) -> dict[str, Any]:
    with open(CI / f"{name}.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def chart_defaults() -> dict[str, Any]:
    with open(CHART / "values.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        out = _render.merge(out, copy.deepcopy(layer))
    return out


def with_minimal(*overrides: dict[str, Any]) -> dict[str, Any]:
    """minimal.yaml plus overrides (deep-merged)."""
    return merged(ci_values("minimal"), *overrides)


def manifests(values: dict[str, Any] | None = None, name: str = RELEASE,
              namespace: str = NAMESPACE) -> dict[str, str]:
    return _render.render_manifests(values or {}, name=name, namespace=namespace)


def render(values: dict[str, Any] | None = None, name: str = RELEASE,
           namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    return _render.objects(manifests(values, name=name, namespace=namespace))


def render_template(template: str, values: dict[str, Any] | None = None,
                    name: str = RELEASE, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Objects of one template file (e.g. "worker-deployment.yaml")."""
    out = manifests(values, name=name, namespace=namespace)
    text = out.get(f"weft/templates/{template}", "")
    return [d for d in yaml.safe_load_all(text) if d]


def render_error(values: dict[str, Any]) -> str:
    """The Helm error message of a render that must fail."""
    import helm_python

    with pytest.raises(helm_python.HelmError) as info:
        manifests(values)
    return str(info.value)


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def component_name(component: str, release: str = RELEASE) -> str:
    base = release if "weft" in release else f"{release}-weft"
    return f"{base}-{component}"


def deployment(objs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return one(objs, "Deployment", component_name(component))


def container(obj: dict[str, Any]) -> dict[str, Any]:
    containers = obj["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def flags(c: dict[str, Any]) -> dict[str, str | None]:
    """`--name=value` args as {name: value}; a bare `--flag` maps to None."""
    out: dict[str, str | None] = {}
    for arg in c.get("args", []):
        assert arg.startswith("--"), f"unexpected argument {arg!r}"
        key, sep, value = arg[2:].partition("=")
        assert key not in out, f"flag --{key} given twice"
        out[key] = value if sep else None
    return out


def env(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(params=CI_FILES)
def ci_case(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param, ci_values(request.param)

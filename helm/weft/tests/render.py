#!/usr/bin/env python3
"""Render the Weft chart offline and print every object as a JSON array.

    python3 helm/weft/tests/render.py [-f values.yaml ...] [--set-json JSON ...] --name RELEASE
                                      [--namespace NS]

Values are layered like `helm template`: the chart's values.yaml, then each -f file in order,
then each --set-json (either a JSON object merged at the top, or Helm's `path=json` form, e.g.
`worker.replicas=3`). The output is a JSON array of the rendered Kubernetes objects in template
order (templates sorted by path, documents in file order; empty documents and NOTES.txt
dropped). On a Helm error (a chart guard's `fail`, a schema violation) the message goes to
stderr and the exit status is 1.

Integration tests use this output to run the rendered containers as local processes, so keep it
stable: nothing but the JSON array goes to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import yaml

CHART_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEFAULT_NAMESPACE = "default"


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `over` into a copy of `base` the way Helm layers user values files: maps
    merge key by key, anything else (lists, scalars, null) replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_set_json(expr: str) -> dict[str, Any]:
    stripped = expr.strip()
    if stripped.startswith("{"):
        value = json.loads(stripped)
        if not isinstance(value, dict):
            raise ValueError(f"--set-json {expr!r}: expected a JSON object")
        return value
    import helm_python

    return helm_python.parse_set_json(expr)


def user_values(files: list[str] | None = None, set_json: list[str] | None = None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in files or []:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a values file must be a YAML mapping")
        values = merge(values, loaded)
    for expr in set_json or []:
        values = merge(values, parse_set_json(expr))
    return values


def render_manifests(values: dict[str, Any], name: str = "weft",
                     namespace: str = DEFAULT_NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text (Helm's own render; raises helm_python errors)."""
    import helm_python

    with helm_python.Chart.load(CHART_DIR) as chart:
        return chart.render(values, name=name, namespace=namespace, is_install=True)


def objects(manifests: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(manifests):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(manifests[path]):
            if doc:
                out.append(doc)
    return out


def render_objects(values: dict[str, Any], name: str = "weft",
                   namespace: str = DEFAULT_NAMESPACE) -> list[dict[str, Any]]:
    return objects(render_manifests(values, name=name, namespace=namespace))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the Weft Helm chart to a JSON array of objects.")
    parser.add_argument("-f", "--values", action="append", default=[], metavar="FILE",
                        help="values file (repeatable, later files win)")
    parser.add_argument("--set-json", action="append", default=[], metavar="JSON",
                        help="a JSON object, or Helm's path=json (repeatable)")
    parser.add_argument("--name", required=True, help="release name")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="release namespace")
    args = parser.parse_args(argv)
    try:
        values = user_values(args.values, args.set_json)
        objs = render_objects(values, name=args.name, namespace=args.namespace)
    except Exception as e:  # helm_python errors carry Helm's message
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    json.dump(objs, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

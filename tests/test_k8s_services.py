"""Each service's Kubernetes objects, the security and resources of every pod, and the image they run.

Per service and overlay: one Deployment, Service, ServiceAccount,
PodDisruptionBudget and HorizontalPodAutoscaler wired to the same pods, native
gRPC probes on the port the service serves, the alerts service reaching the
query service by its Service name, and ConfigMap keys that are settings of
their service. Every pod meets the restricted pod security profile with
requests within limits, and the Dockerfile builds a slim, non-root image.
"""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from llmmeter_common.serving import LIVENESS
from llmmeter_console.settings import ConsoleSettings

from k8s_render import OVERLAYS, ROOT, SERVICES, Doc, _config_map, _one, _pod_spec, _quantity

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
    assert svc["spec"]["ports"][0]["name"] == "grpc"
    for svc_port in svc["spec"]["ports"]:  # gRPC; ingest also OTLP/HTTP
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
    otlp_http = ([("otlp-http", settings.model_fields["otlp_http_port"].default)]
                 if "otlp_http_port" in settings.model_fields else [])
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("grpc", default_port), ("metrics", metrics_port), *otlp_http]
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
            name = m.group(1).lower()
            settings = ConsoleSettings if name == "console" else SERVICES[name][1]
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


# --- the image -----------------------------------------------------------------------------------------


def test_dockerfile_builds_a_slim_non_root_services_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    python = [ln for ln in froms if "AS assets" not in ln]
    assert len(python) == 2 and all(ln.split()[1] == "python:3.11-slim" for ln in python), "multi-stage, slim"
    assets = [ln for ln in lines if "chart.js@" in ln]  # the console's charts from npm, in their own stage
    assert len(froms) == 3 and froms[0].endswith("AS assets") and len(assets) == 1
    final = lines[lines.index(froms[-1]):]
    assert "USER 10001:10001" in final
    assert any("useradd" in ln and "--uid 10001" in ln for ln in final)
    assert not any(re.search(r"apt-get install|pip install", ln) for ln in final), "nothing built at the end"
    assert "./clients/python ." in text and "[embedded" not in text and "[dev" not in text
    cmd = json.loads(next(ln for ln in final if ln.startswith("CMD "))[4:])
    assert cmd[:2] == ["python", "-m"] and importlib.util.find_spec(cmd[2]) is not None
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".tools", ".llmmeter", "**/__pycache__"} <= set(ignored)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_alerts_pod_gets_the_bootstrap_admin_key_from_its_secret(
        rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    holders = {}
    for doc in docs:
        spec = _pod_spec(doc)
        for c in (spec or {}).get("containers", []):
            for e in c.get("env", []):
                if e["name"] == "LLMMETER_BOOTSTRAP_ADMIN_KEY":
                    assert "value" not in e, "the key comes from a Secret, never a literal"
                    holders[doc["metadata"]["name"]] = e["valueFrom"]["secretKeyRef"]
    (ref,) = holders.values()
    assert list(holders) == ["llmmeter-alerts"] and ref["key"] == "bootstrap-admin-key"
    assert "bootstrap_admin_key" in SERVICES["alerts"][1].model_fields
    secrets = [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"]
    if overlay == "dev":  # generated, with a hash suffix the reference follows
        assert ref["name"] in secrets and ref["name"].startswith("llmmeter-auth")
    else:
        assert ref["name"] == "llmmeter-auth" and secrets == []


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", list(SERVICES))
def test_a_network_policy_opens_only_the_service_ports(
        rendered: dict[str, list[Doc]], overlay: str, service: str) -> None:
    docs, name = rendered[overlay], f"llmmeter-{service}"
    policy = _one(docs, "NetworkPolicy", name)
    deployment = _one(docs, "Deployment", name)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    opened = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert opened == {p["containerPort"] for p in container["ports"]}
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert {5432, 53} <= egress_ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_console_runs_with_http_probes_and_reaches_only_query_and_alerts(
        rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    deployment = _one(docs, "Deployment", "llmmeter-console")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "llmmeter_console"]
    assert importlib.util.find_spec("llmmeter_console") is not None
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert not [e for e in container.get("env", []) if "PGPASSWORD" in e["name"]], "no database access"
    svc = _one(docs, "Service", "llmmeter-console")
    assert svc["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"] == 8080
    config = _config_map(docs)["data"]
    assert config["LLMMETER_CONSOLE_HOST"] == "0.0.0.0" and config["LLMMETER_CONSOLE_QUERY_ADDR"].startswith(
        "llmmeter-query:")
    policy = _one(docs, "NetworkPolicy", "llmmeter-console")
    reached = {r["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
               for r in policy["spec"]["egress"] if "to" in r}
    assert reached == {"llmmeter-query", "llmmeter-alerts"}

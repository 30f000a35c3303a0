"""The Kubernetes manifests of deploy/kubernetes/base, as kustomize would list them."""

from __future__ import annotations

from typing import Any

import yaml

from tests.support import ROOT

BASE = ROOT / "deploy" / "kubernetes" / "base"
VALIDATE = ROOT / "deploy" / "kubernetes" / "validate"
GENERATOR = ROOT / "scripts" / "kubernetes-manifests"
OPERATOR_API = "monitoring.coreos.com/v1"


def objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    objects = []
    for name in kustomization["resources"]:
        objects += [doc for doc in yaml.safe_load_all((BASE / name).read_text()) if doc]
    return objects


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [o for o in objects() if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return found

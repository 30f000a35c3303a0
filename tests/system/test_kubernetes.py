"""deploy/kubernetes: every manifest valid for a current Kubernetes (kubernetes-validate, strict),
the Prometheus Operator's objects valid against the operator's published CRD schemas, the
generated PrometheusRule and dashboard equal to monitoring/, and what the manifests say about
the service (ports, probes, the stop's timing, settings) true of the service."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support import ROOT
from tests.support.kubernetes import GENERATOR, OPERATOR_API, VALIDATE, objects, one
from tests.support.tools import missing, require


def _operator_check(objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    node = require("node")
    if not (VALIDATE / "node_modules").is_dir():
        missing("the CRD checker is not installed (npm ci --prefix deploy/kubernetes/validate)")
    return subprocess.run(
        [node, "validate.mjs"],
        cwd=VALIDATE,
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_operator_objects_match_its_published_crd_schemas() -> None:
    operator_objects = [o for o in objects() if o["apiVersion"] == OPERATOR_API]
    assert {o["kind"] for o in operator_objects} == {"ServiceMonitor", "PrometheusRule", "Probe"}
    result = _operator_check(operator_objects)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = one("ServiceMonitor")
    broken["spec"]["scrapeProtocols"] = ["OpenMetrics"]  # not one of the allowed values
    result = _operator_check([broken])
    assert result.returncode == 1 and "scrapeProtocols" in result.stdout


def test_generated_manifests_equal_monitoring() -> None:
    result = subprocess.run([GENERATOR, "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_prometheus_rule_loads_in_promtool(tmp_path: Path) -> None:
    promtool = require("promtool")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": one("PrometheusRule")["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = yaml.safe_load((ROOT / "monitoring/prometheus/rules/alerts.yml").read_text())
    names = {r["alert"] for g in alerts["groups"] for r in g["rules"] if "alert" in r}
    spec_names = {
        r["alert"] for g in one("PrometheusRule")["spec"]["groups"] for r in g["rules"]
        if "alert" in r
    }  # fmt: skip
    assert spec_names == names


def test_the_probes_name_modules_the_shipped_exporter_configuration_has(tmp_path: Path) -> None:
    exporter = require("prometheus-blackbox-exporter")
    config = tmp_path / "blackbox.yml"
    config.write_text(one("ConfigMap", "scene-packer-blackbox-modules")["data"]["blackbox.yml"])
    check = subprocess.run(
        [exporter, f"--config.file={config}", "--config.check"], capture_output=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    modules = set(yaml.safe_load(config.read_text())["modules"])
    probes = [o for o in objects() if o["kind"] == "Probe"]
    assert {p["spec"]["module"] for p in probes} == modules
    for probe in probes:  # the labels ProbeFailing reads
        labels = probe["spec"]["targets"]["staticConfig"]["labels"]
        assert labels["module"] == probe["spec"]["module"] and labels["probe_job"] == "scene-packer"
        assert probe["spec"]["jobName"] == "blackbox"

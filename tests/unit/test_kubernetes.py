"""deploy/kubernetes: every manifest valid for a current Kubernetes (kubernetes-validate, strict),
the Prometheus Operator's objects valid against the operator's published CRD schemas, the
generated PrometheusRule and dashboard equal to monitoring/, and what the manifests say about
the service (ports, probes, the stop's timing, settings) true of the service."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

import kubernetes_validate
import pytest
from hypercorn.config import Config

from service.app import create_app
from service.serving.cli import _check_server_config
from service.serving.supervisor import stop_budget
from service.settings import SettingsError, load_settings
from tests.support import ROOT
from tests.support.kubernetes import BASE, GENERATOR, OPERATOR_API, objects, one


def _generator() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("kubernetes_manifests", str(GENERATOR))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_every_manifest_is_valid_for_current_kubernetes_in_strict_mode() -> None:
    version = kubernetes_validate.latest_version()
    checked = []
    for obj in objects():
        if obj["apiVersion"] == OPERATOR_API:
            continue  # the operator's kinds: next test
        kubernetes_validate.validate(obj, version, strict=True)
        checked.append(obj["kind"])
    assert {"Deployment", "Service", "PodDisruptionBudget", "Job", "ConfigMap", "Secret"} <= set(
        checked
    )


def test_strict_validation_refuses_a_misspelt_field() -> None:
    """The check above can fail: a field Kubernetes does not know is refused."""
    deployment = one("Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_the_check_names_a_generated_file_that_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generator = _generator()
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text((BASE / "prometheusrule.yaml").read_text().replace("> 10", "> 11"))
    generator.GENERATED = {stale: generator.prometheus_rule}
    generator.ROOT = tmp_path
    assert generator.main(["--check"]) == 1
    assert "prometheusrule.yaml differs" in capsys.readouterr().err


def _hypercorn() -> Config:
    return Config.from_toml(BASE / "hypercorn.toml")


def test_the_container_listens_where_the_probes_and_the_service_look() -> None:
    config = _hypercorn()
    _check_server_config(config)  # what `scene-packer serve` refuses before it starts
    container = one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    (port,) = container["ports"]
    assert config.bind == [f"0.0.0.0:{port['containerPort']}"]
    assert one("Service")["spec"]["ports"][0]["targetPort"] == port["name"]
    app = create_app(load_settings())
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]
        assert container[probe]["httpGet"]["path"] in routes
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/health/live"


def test_the_selectors_find_the_pods_and_the_service() -> None:
    pods = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one("Service")
    for selector in (
        service["spec"]["selector"],
        one("Deployment")["spec"]["selector"]["matchLabels"],
        one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pods.items()
    monitor = one("ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }
    # The operator labels targets with `service` = the Service's name, which the scrape alerts
    # (monitoring/prometheus/rules/alerts.yml) select on.
    assert service["metadata"]["name"] == "scene-packer"
    assert 'service="scene-packer"' in (ROOT / "monitoring/prometheus/rules/alerts.yml").read_text()


def test_the_pod_outlives_its_own_stop() -> None:
    """SIGTERM comes after preStop; the stop then drains and finishes requests in flight: the
    kubelet must not kill the pod before that (it would drop requests)."""
    pod = one("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    settings = one("ConfigMap", "scene-packer")["data"]
    stop = pre_stop + stop_budget(_hypercorn(), float(settings["DRAIN_SECONDS"]))
    assert pod["terminationGracePeriodSeconds"] >= stop
    # and a request within its deadline is waited for, as `scene-packer serve` requires
    assert float(settings["REQUEST_TIMEOUT"]) < _hypercorn().graceful_timeout


def test_the_pod_runs_locked_down_with_a_memory_limit() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # the cgroup-aware memory metric and health check read this limit; the password hashes of
    # every worker (argon2, 64 MiB each) fit inside it
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    threads = int(one("ConfigMap", "scene-packer")["data"]["PASSWORD_HASH_THREADS"])
    assert _hypercorn().workers * threads * 64 < int(limit.removesuffix("Mi"))
    mounts = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert one("ConfigMap", "scene-packer")["data"]["DATA_DIR"] in mounts
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"USER {pod['securityContext']['runAsUser']}" in dockerfile
    assert f"EXPOSE {container['ports'][0]['containerPort']}" in dockerfile


def test_the_shipped_settings_refuse_to_start_until_the_secret_is_filled_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        **one("ConfigMap", "scene-packer")["data"],
        **one("Secret")["stringData"],
        "DATA_DIR": str(tmp_path),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert [name for name, _ in refused.value.problems] == ["SECRET_KEY"]
    monkeypatch.setenv("SECRET_KEY", "k" * 48)
    settings = load_settings()  # every other setting the manifests carry is valid
    assert settings.is_production and settings.drain_seconds > 0

"""deploy/: the Kubernetes example parses, and what a user could silently break holds: the
KEDA trigger names Ember's stream and consumer on the NATS monitoring port, gateway and workers
reach NATS at its Service, workers scale from zero, the gateway's probes hit /health and /ready,
and every container's args are a command line `ember` accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from ember.cli import build_parser
from ember.queue.layout import CONSUMER, STREAM

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _documents() -> list[dict[str, Any]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return found


DOCUMENTS = _documents()


def one(kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in DOCUMENTS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} found"
    return matches[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} in {args}"
    return args[args.index(name) + 1]


def port_named(ports: list[dict[str, Any]], name: str) -> int:
    number: int = next(p for p in ports if p["name"] == name)["containerPort"]
    return number


def service_port(service: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in service["spec"]["ports"] if p["name"] == name)
    return found


def test_every_manifest_parses_and_names_itself() -> None:
    expected = {"nats.yaml", "gateway.yaml", "worker.yaml", "keda-scaledobject.yaml"}
    assert {p.name for p in DEPLOY.glob("*.yaml")} >= expected
    for doc in DOCUMENTS:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "ember", doc["metadata"]


def test_keda_scales_the_workers_from_zero_on_embers_stream_and_consumer() -> None:
    scaled = one("ScaledObject", "ember-worker")
    spec = scaled["spec"]
    assert spec["minReplicaCount"] == 0
    assert spec["maxReplicaCount"] >= 1
    worker = one("Deployment", spec["scaleTargetRef"]["name"])
    assert worker["spec"]["replicas"] == 0
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "nats-jetstream"
    metadata = trigger["metadata"]
    assert metadata["stream"] == STREAM
    assert metadata["consumer"] == CONSUMER
    assert metadata["account"] == "$G"
    assert int(metadata["lagThreshold"]) >= 1
    host, _, port = metadata["natsServerMonitoringEndpoint"].partition(":")
    nats_service = one("Service", host.split(".")[0])
    assert host in ("nats", "nats.ember", "nats.ember.svc", "nats.ember.svc.cluster.local")
    assert int(port) == service_port(nats_service, "monitor")["port"]


def test_nats_runs_jetstream_on_a_volume_with_monitoring_on() -> None:
    statefulset = one("StatefulSet", "nats")
    conf = one("ConfigMap", "nats-config")["data"]["nats.conf"]
    nats = container(statefulset)
    ports = nats["ports"]
    assert f"http_port: {port_named(ports, 'monitor')}" in conf
    assert f"port: {port_named(ports, 'client')}" in conf
    assert "jetstream" in conf and "store_dir: /data/" in conf
    mounts = {m["name"]: m["mountPath"] for m in nats["volumeMounts"]}
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert mounts[claim["metadata"]["name"]] == "/data"
    service = one("Service", "nats")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service_port(service, "client")["targetPort"] == "client"


@pytest.mark.parametrize(
    ("name", "command"), [("ember-worker", "worker"), ("ember-gateway", "gateway")]
)
def test_workers_and_gateway_reach_nats_at_its_service(name: str, command: str) -> None:
    args = container(one("Deployment", name))["args"]
    assert args[0] == command
    nats_service = one("Service", "nats")
    client = service_port(nats_service, "client")["port"]
    assert flag(args, "--nats") == f"nats://nats:{client}"
    parsed = build_parser().parse_args(args)  # a flag ember does not know exits here
    assert parsed.command == command


def test_the_workers_finish_running_jobs_before_they_are_killed() -> None:
    worker = one("Deployment", "ember-worker")
    args = container(worker)["args"]
    grace = float(flag(args, "--shutdown-grace-period"))
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace
    assert "--idle-timeout" not in args  # KEDA scales down; an exit would only be restarted
    assert container(worker)["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_gateways_probes_hit_health_and_ready_on_its_port() -> None:
    gateway = one("Deployment", "ember-gateway")
    spec = container(gateway)
    listening = int(flag(spec["args"], "--port"))
    http = port_named(spec["ports"], "http")
    assert http == listening
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        get = spec[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in ("http", listening)
    assert flag(spec["args"], "--host") == "0.0.0.0"
    service = one("Service", "ember-gateway")
    assert service["spec"]["selector"].items() <= (
        gateway["spec"]["template"]["metadata"]["labels"].items()
    )
    assert service_port(service, "http")["targetPort"] in ("http", listening)
    hosts = flag(spec["args"], "--allowed-hosts").split(",")
    assert "ember-gateway" in hosts  # the Service's name as clients send it in Host

"""docker-compose.yml is valid and wires the mesh the way `nurture up` does (no Docker engine here:
the file is parsed and checked against the code's own settings and entry points)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from nurture.settings import SERVICES, Settings

ROOT = Path(__file__).resolve().parents[3]


def load() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_process_of_the_mesh_is_there_with_a_health_check() -> None:
    services = load()["services"]
    for name in [*SERVICES, "gateway", "redis", "postgres", "otel-collector", "jaeger"]:
        assert name in services, name
        assert "healthcheck" in services[name], name
    for name in SERVICES:
        assert services[name]["command"] == ["python", "-m", f"services.{name}"]
        assert (ROOT / "services" / name / "__main__.py").exists(), f"services/{name} has no entry point"
    assert services["gateway"]["command"] == ["python", "-m", "gateway"]
    assert set(services["gateway"]["depends_on"]) >= set(SERVICES)


def test_settings_match_the_code() -> None:
    services = load()["services"]
    known = {f"NURTURE_{name.upper()}" for name in Settings.__dataclass_fields__}
    for name in [*SERVICES, "gateway"]:
        env = services[name]["environment"]
        assert set(env) <= known, set(env) - known
        assert env["NURTURE_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["NURTURE_OTLP_ENDPOINT"].startswith("http://otel-collector:")
        for service in SERVICES:
            address = env[f"NURTURE_{service.upper()}_ADDR"]
            # A replicated service is named as a dns: target, so its clients balance over every replica,
            # and serves on NURTURE_GRPC_PORT (its address does not say which replica it is).
            replicated = address.startswith("dns:///")
            host, port = address.removeprefix("dns:///").split(":")
            if replicated:
                assert str(services[service]["environment"]["NURTURE_GRPC_PORT"]) == port
            assert host == service
            default_port = getattr(Settings(), f"{service}_addr").rsplit(":", 1)[1]
            assert port == default_port
            check = " ".join(services[service]["healthcheck"]["test"])
            assert re.search(rf":{port}\b", check)


def test_collector_config_exports_to_jaeger() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "otel-collector.yaml").read_text())
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["otlp/jaeger"]
    assert config["exporters"]["otlp/jaeger"]["endpoint"].startswith("jaeger:")


def test_every_process_must_be_given_every_secret_it_checks() -> None:
    """They listen on 0.0.0.0, so each refuses to start without these (nurture.settings.check_secrets):
    compose must demand them from the operator (`${VAR:?...}`), never supply a value of its own."""
    services = load()["services"]
    for name in [*SERVICES, "gateway"]:
        env = services[name]["environment"]
        assert env["NURTURE_BIND_HOST"] == "0.0.0.0"
        for var in ("NURTURE_SECRET", "NURTURE_API_KEY", "NURTURE_MESH_TOKEN", "NURTURE_CRM_TOKENS"):
            assert str(env.get(var, "")).startswith(f"${{{var}:?"), (name, var)


def test_every_service_runs_replicas() -> None:
    from cli.up import REPLICATED

    assert set(REPLICATED) == set(SERVICES)
    services = load()["services"]
    for name in REPLICATED:
        assert services[name]["deploy"]["replicas"] >= 2, name
        # Every container of a scaled service gets one environment: an empty replica name makes each use
        # its host name, so two never take each other's claims for their own.
        assert services[name]["environment"]["NURTURE_REPLICA"] == "", name
        assert all("-" in str(p).split(":")[0] for p in services[name].get("ports", [])), name
        assert services["gateway"]["environment"][f"NURTURE_{name.upper()}_ADDR"].startswith("dns:///"), name


def test_the_redis_cluster_override_moves_every_process_onto_a_formed_cluster() -> None:
    """deploy/compose.redis-cluster.yml: every process of docker-compose.yml's mesh (and its migrate step)
    gets the cluster clients and a node of the cluster, and starts only once the cluster is formed from
    every node it defines."""
    base = load()["services"]
    override = yaml.safe_load((ROOT / "deploy" / "compose.redis-cluster.yml").read_text())
    services = override["services"]
    nodes = sorted(n for n in services if re.fullmatch(r"redis-\d+", n))
    assert len(nodes) >= 6   # three masters and a replica each
    known = {f"NURTURE_{name.upper()}" for name in Settings.__dataclass_fields__}
    for name in [*SERVICES, "gateway", "migrate"]:
        assert name in base, name
        env = services[name]["environment"]
        assert set(env) <= known and env["NURTURE_REDIS_CLUSTER"] == "1", name
        assert env["NURTURE_REDIS_URL"].split("//")[1].split(":")[0] in nodes, name
        # Its masters have replicas, so writes wait for one (as `nurture up --redis-cluster-replicas` sets):
        # without the wait a failover loses accepted events (docs/ARCHITECTURE.md, "Redis failover").
        assert env["NURTURE_REDIS_WAIT_REPLICAS"] == "1", name
        assert services[name]["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully"
    init = services["redis-cluster-init"]
    assert set(init["depends_on"]) == set(nodes)
    command = init["command"][0]
    assert "--cluster create" in command and "--cluster-replicas 1" in command
    assert f"for n in {' '.join(str(i) for i in range(1, len(nodes) + 1))}" in command
    for n in nodes:
        assert "--cluster-enabled" in services[n]["command"] and services[n]["volumes"][0].startswith(f"{n}:")
        assert n in override["volumes"]


def test_messaging_reads_its_dkim_keys_from_a_read_only_folder_not_the_environment() -> None:
    """The comment said the keys were "PEM files mounted in" and nothing mounted them: a key given as a path
    had no file behind it in the container."""
    messaging = load()["services"]["messaging"]
    mounts = [m for m in messaging.get("volumes", []) if m.endswith(":/run/nurture/dkim:ro")]
    assert len(mounts) == 1, messaging.get("volumes")
    assert mounts[0].startswith("${NURTURE_DKIM_DIR:-./deploy/dkim}")
    assert (ROOT / "deploy" / "dkim" / ".gitignore").read_text().split() == ["*.pem"]

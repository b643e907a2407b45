"""examples/ holds what it claims: configs that pass `pvtunnel check`, manifests that
parse and fit together, and an embedding program that works against a real server.

What cannot run here is said in each example's README: no Docker engine, no
cluster, no nginx or systemd. So the compose file and manifests are checked for
what they refer to, and configs embedded in them are laid out as files the way the
container would see them before `pvtunnel check` reads them.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from tests.integration.client import fetch
from tests.integration.harness import TOKEN, start_server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PVTUNNEL = [sys.executable, "-m", "pvtunnel"]
# Stand-ins for the secrets that live outside the examples (token files under /etc,
# compose's .env); the environment wins over token_file, as on a real host.
TOKEN_ENV = {
    "PVTUNNEL_TOKEN": "example-token",
    "PVTUNNEL_INTERNAL_TOKEN": "example-token",
    "PVTUNNEL_ADMIN_TOKEN": "example-admin-token",
}


def check(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PVTUNNEL_")}
    return subprocess.run(
        [*PVTUNNEL, "check", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**clean, **env},
        check=False,
    )


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as file:
        documents = [doc for doc in yaml.safe_load_all(file) if doc is not None]
    assert all(isinstance(doc, dict) for doc in documents), path
    return documents


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """The Kubernetes objects by (kind, name)."""
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((EXAMPLES / "kubernetes").glob("*.yaml")):
        for doc in yaml_documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, key
            objects[key] = doc
    return objects


TOML_FILES = sorted(EXAMPLES.rglob("*.toml"))
YAML_FILES = sorted([*EXAMPLES.rglob("*.yaml"), *EXAMPLES.rglob("*.yml")])


def test_the_examples_are_all_there() -> None:
    names = {str(path.relative_to(EXAMPLES)) for path in EXAMPLES.rglob("*") if path.is_file()}
    assert {
        "README.md",
        "embedding.py",
        "ec2/README.md",
        "ec2/server.toml",
        "ec2/agent.toml",
        "ec2/nginx.conf",
        "ec2/pvtunnel-agent.service",
        "docker/README.md",
        "docker/Dockerfile",
        "docker/compose.yaml",
        "kubernetes/README.md",
        "haproxy/README.md",
        "haproxy/haproxy.cfg",
        "haproxy/server.toml",
        "haproxy/agent.toml",
    } <= names
    assert len(TOML_FILES) == 6
    assert len(YAML_FILES) == 5


@pytest.mark.parametrize("path", TOML_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_config_file_passes_pvtunnel_check(path: Path) -> None:
    result = check(path, TOKEN_ENV)
    assert result.returncode == 0, result.stderr
    expected = "agent" if path.name.startswith("agent") else "server"
    assert f"a valid {expected} configuration" in result.stdout


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert yaml_documents(path)


def test_ec2_units_run_the_configs_that_come_with_them() -> None:
    agent = tomllib.loads((EXAMPLES / "ec2" / "agent.toml").read_text())
    server = tomllib.loads((EXAMPLES / "ec2" / "server.toml").read_text())
    assert agent["server"]["token_file"].startswith("/etc/pvtunnel/")
    assert "token" not in agent["server"]
    assert server["host"] == "127.0.0.1"  # only nginx reaches it
    for unit, command in (("agent", "agent"), ("server", "serve")):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read(EXAMPLES / "ec2" / f"pvtunnel-{unit}.service")
        exec_start = parser["Service"]["ExecStart"].split()
        assert exec_start[:2] == ["/opt/pvtunnel/bin/pvtunnel", command]
        assert exec_start[exec_start.index("--config") + 1] == f"/etc/pvtunnel/{unit}.toml"
        assert parser["Service"]["KillSignal"] == "SIGTERM"
        assert parser["Service"]["User"] == "pvtunnel"
    nginx = (EXAMPLES / "ec2" / "nginx.conf").read_text()
    assert f"proxy_pass http://127.0.0.1:{server['internal']['port']};" in nginx
    assert f"proxy_pass http://127.0.0.1:{server['external']['port']};" in nginx
    assert "proxy_set_header Upgrade $http_upgrade;" in nginx


def test_haproxy_config_is_valid_and_fits_the_pvtunnel_configs() -> None:
    """Syntax by HAProxy itself; the ports it uses are the ones the configs name.

    ``tests/integration/test_haproxy.py`` runs this config in front of real servers.
    """
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    config = EXAMPLES / "haproxy" / "haproxy.cfg"
    result = subprocess.run(
        [haproxy, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = config.read_text()
    server = tomllib.loads((EXAMPLES / "haproxy" / "server.toml").read_text())
    external, internal = server["external"]["port"], server["internal"]["port"]
    admin = server["admin"]["port"]
    for address in ("10.0.1.10", "10.0.1.11"):
        assert f"{address}:{external} check port {admin}" in text
        assert f"{address}:{internal}\n" in text
    assert "http-check send meth GET uri /ready" in text
    assert server["timeouts"]["drain_delay_s"] > 2  # HAProxy's fall 2, inter 1s
    agent = tomllib.loads((EXAMPLES / "haproxy" / "agent.toml").read_text())
    agent_ports = sorted(int(url.rsplit(":", 1)[1]) for url in agent["server"]["url"])
    assert agent_ports == sorted(int(port) for port in re.findall(r"bind :(818\d)", text))
    assert len(agent_ports) == 2  # one per server: each agent reaches both


def test_compose_file_wires_server_agent_and_a_private_app() -> None:
    (compose,) = yaml_documents(EXAMPLES / "docker" / "compose.yaml")
    services = compose["services"]
    assert set(services) == {"server", "agent", "app"}
    assert compose["networks"]["private"]["internal"] is True
    assert services["app"]["networks"] == ["private"]
    assert "ports" not in services["app"]
    assert set(services["agent"]["networks"]) == {"edge", "private"}
    assert services["server"]["networks"] == ["edge"]

    build = services["server"]["build"]
    context = (EXAMPLES / "docker" / build["context"]).resolve()
    assert context == ROOT
    dockerfile = (context / build["dockerfile"]).read_text()
    assert re.search(r'^ENTRYPOINT \["pvtunnel"\]$', dockerfile, re.M)
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for name in source.split():
            assert (context / name).exists(), name

    agent_config = tomllib.loads((EXAMPLES / "docker" / "agent.toml").read_text())
    (route,) = agent_config["routes"]
    assert route["value"] == "app"  # the compose service, by name
    assert agent_config["server"]["url"] == "ws://server:8081"
    for name in ("server", "agent"):
        service = services[name]
        mounts = dict(volume.rsplit(":", 1)[0].split(":") for volume in service["volumes"])
        config_path = service["command"][service["command"].index("--config") + 1]
        host_file = EXAMPLES / "docker" / next(h for h, c in mounts.items() if c == config_path)
        assert host_file.is_file()
        admin_port = tomllib.loads(host_file.read_text())["admin"]["port"]
        assert f"127.0.0.1:{admin_port}/ready" in " ".join(service["healthcheck"]["test"])
    assert services["agent"]["depends_on"]["server"]["condition"] == "service_healthy"


def test_kubernetes_agent_gets_config_secret_and_probes(tmp_path: Path) -> None:
    objects = manifests()
    deployment = objects[("Deployment", "pvtunnel-agent")]
    config_map = objects[("ConfigMap", "pvtunnel-agent")]
    secret = objects[("Secret", "pvtunnel-agent")]
    assert objects[("Service", "hello")]["spec"]["ports"][0]["port"] == 80

    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert volumes["secrets"]["secret"]["secretName"] == secret["metadata"]["name"]
    config_arg = next(arg for arg in container["args"] if arg.startswith("--config="))
    config_file = Path(config_arg.removeprefix("--config="))
    assert config_file.parent == Path(mounts["config"])
    assert config_file.name in config_map["data"]

    agent_toml = config_map["data"][config_file.name]
    admin = tomllib.loads(agent_toml)["admin"]
    (admin_port,) = [port for port in container["ports"] if port["name"] == "admin"]
    assert admin_port["containerPort"] == admin["port"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}

    # The pod's view: the ConfigMap and the Secret as files where they are mounted.
    # No environment tokens, so the token_file paths themselves must resolve.
    def inside(mount: str) -> Path:
        return tmp_path / Path(mount).relative_to("/")

    inside(mounts["config"]).mkdir(parents=True)
    inside(mounts["secrets"]).mkdir(parents=True)
    for name, text in config_map["data"].items():
        (inside(mounts["config"]) / name).write_text(text)
    for name, text in secret["stringData"].items():
        (inside(mounts["secrets"]) / name).write_text(text)
    result = check(inside(str(config_file)), {})
    assert result.returncode == 0, result.stderr
    (inside(mounts["secrets"]) / "admin-token").unlink()
    missing = check(inside(str(config_file)), {})
    assert missing.returncode == 2
    assert "admin.token_file: cannot read" in missing.stderr


def test_kubernetes_servers_are_replicas_the_agents_discover(tmp_path: Path) -> None:
    objects = manifests()
    deployment = objects[("Deployment", "pvtunnel-server")]
    config_map = objects[("ConfigMap", "pvtunnel-server")]
    secret = objects[("Secret", "pvtunnel-server")]
    headless = objects[("Service", "pvtunnel-internal")]
    clients = objects[("Service", "pvtunnel")]
    budget = objects[("PodDisruptionBudget", "pvtunnel-server")]

    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"] == labels
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    server = tomllib.loads(config_map["data"]["server.toml"])
    assert ports == {
        "external": server["external"]["port"],
        "internal": server["internal"]["port"],
        "admin": server["admin"]["port"],
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    timeouts = server["timeouts"]
    assert pod["terminationGracePeriodSeconds"] > timeouts["drain_delay_s"] + timeouts["grace_s"]
    # The pod must leave the endpoints within the drain delay.
    probe = container["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] < timeouts["drain_delay_s"]

    # Agents: the headless Service's name, discovered; clients: a plain Service.
    assert headless["spec"]["clusterIP"] == "None"
    for service in (headless, clients):
        assert service["spec"]["selector"] == labels
    (internal_port,) = headless["spec"]["ports"]
    assert internal_port["targetPort"] == "internal"
    (client_port,) = clients["spec"]["ports"]
    assert client_port["targetPort"] == "external"
    agent_toml = objects[("ConfigMap", "pvtunnel-agent")]["data"]["agent.toml"]
    agent_server = tomllib.loads(agent_toml)["server"]
    assert agent_server["discover"] == "dns"
    namespace = headless["metadata"]["namespace"]
    name = headless["metadata"]["name"]
    assert agent_server["url"] == (
        f"ws://{name}.{namespace}.svc.cluster.local:{internal_port['port']}"
    )
    agent_secret = objects[("Secret", "pvtunnel-agent")]["stringData"]
    assert agent_secret["token"] == secret["stringData"]["internal-token"]

    assert budget["spec"]["selector"]["matchLabels"] == labels
    assert budget["spec"]["maxUnavailable"] < spec["replicas"]

    # server.toml as the pod sees it: the Secret's files where it mounts them.
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    config_dir = tmp_path / Path(mounts["config"]).relative_to("/")
    secrets_dir = tmp_path / Path(mounts["secrets"]).relative_to("/")
    config_dir.mkdir(parents=True)
    secrets_dir.mkdir(parents=True)
    (config_dir / "server.toml").write_text(config_map["data"]["server.toml"])
    for file_name, text in secret["stringData"].items():
        (secrets_dir / file_name).write_text(text)
    result = check(config_dir / "server.toml", {})
    assert result.returncode == 0, result.stderr
    assert "a valid server configuration" in result.stdout


async def test_embedding_runs_an_agent_against_a_real_server() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            host, port = running.addresses.internal
            process = await trio.lowlevel.open_process(
                [sys.executable, str(EXAMPLES / "embedding.py"), f"ws://{host}:{port}"],
                stdout=subprocess.PIPE,
                env={**os.environ, "PVTUNNEL_TOKEN": TOKEN},
            )
            try:
                assert process.stdout is not None
                output = b""
                while b"\n" not in output:
                    chunk = await process.stdout.receive_some(4096)
                    assert chunk, f"embedding.py ended early: {output!r}"
                    output += chunk
                line = output.decode().splitlines()[0]
                assert re.fullmatch(
                    r"embedding: serving route 'embedded' through ws://\S+; "
                    r"admin http://127\.0\.0\.1:\d+",
                    line,
                ), line
                reply = await fetch(running.port, b"GET", b"/", host=b"embedded")
                assert reply.status == 200
                assert reply.body == b"Hello from a program that embeds a pvtunnel agent!\n"
                process.send_signal(signal.SIGINT)
                assert await process.wait() == 0
            finally:
                if process.returncode is None:
                    process.kill()
                await process.wait()
                if process.stdout is not None:
                    await process.stdout.aclose()
            nursery.cancel_scope.cancel()

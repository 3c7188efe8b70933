"""docker/compose.yaml and docker/Dockerfile as the docs describe them (fast; the image itself is built
and run by test_image.py under make test-docker)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from benchmarks import docker as lab

COMPOSE = lab.ROOT / "docker" / "compose.yaml"


def test_compose_trains_on_cpu_and_gpus_and_serves_tensorboard_on_the_same_logs():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert set(services) == {"train", "train-gpu", "tensorboard"}
    # "<host folder>:/zoo/logs[:ro]", the host folder a compose variable with a default: ${ZOO_LOGS:-../logs}
    logs = {name: [v for v in svc["volumes"] if ":/zoo/logs" in v] for name, svc in services.items()}
    assert all(len(vols) == 1 for vols in logs.values()), logs
    host_side = {vols[0].split(":/zoo/logs")[0] for vols in logs.values()}
    assert host_side == {"${ZOO_LOGS:-../logs}"}, f"the services mount different logs folders: {logs}"
    assert logs["tensorboard"][0].endswith(":ro")
    devices = services["train-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "deploy" not in services["train"]
    assert services["tensorboard"]["ports"] == ["127.0.0.1:6006:6006"]
    assert services["tensorboard"]["entrypoint"] == ["tensorboard"]


def test_the_check_runs_the_compose_tensorboard_command_on_localhost():
    cmd = lab.tensorboard_command(6123)
    assert cmd[:3] == ["tensorboard", "--logdir", "/zoo/logs"]
    assert "--bind_all" not in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "6123"


def test_dockerfile_installs_the_wheel_as_a_non_root_user():
    text = (lab.ROOT / "docker" / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "ARG BASE_IMAGE=python:3.11-slim-bookworm"
    assert "USER zoo" in lines and 'ENTRYPOINT ["zoo-train"]' in lines
    assert 'VOLUME ["/zoo/data", "/zoo/logs", "/zoo/cache"]' in lines
    assert "pip install -e" not in text and "--editable" not in text


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is not installed")
def test_compose_file_is_valid_for_docker_compose():
    subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], check=True, timeout=60)

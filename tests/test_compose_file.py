"""The docker compose file for users with Docker: parsed by docker-compose itself."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

COMPOSE = Path(__file__).resolve().parents[1] / "compose" / "docker-compose.yml"


def test_docker_compose_accepts_the_file() -> None:
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is installed by .ci/install-services.sh"
    out = subprocess.run(
        [tool, "-f", str(COMPOSE), "--profile", "otel", "config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    config = out.stdout
    for setting in (
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
    ):  # single node: all must be 1
        assert re.search(rf"{setting}: '?1'?\n", config), setting
    services = subprocess.run(
        [tool, "-f", str(COMPOSE), "--profile", "otel", "config", "--services"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert sorted(services) == ["kafka", "otel-collector", "redis"]

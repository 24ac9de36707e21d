"""docker/: what the compose file promises users, checked without a Docker engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return doc


def test_the_server_is_published_on_the_hosts_loopback_only() -> None:
    service = compose()["services"]["koboldcpp"]
    assert [p.split(":", 1)[0] for p in service["ports"]] == ["127.0.0.1"]
    assert service["ports"][0].endswith(":5001")


def test_one_gpu_is_reserved_and_models_are_mounted_read_only() -> None:
    service = compose()["services"]["koboldcpp"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    volume = service["volumes"][0]
    assert volume["target"] == "/models" and volume["read_only"] is True
    assert service["build"]["dockerfile"] == "docker/Dockerfile"


def test_the_image_builds_with_the_projects_own_make_target() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "make patch-and-build BACKEND=cuda" in text
    assert "FROM nvidia/cuda:${CUDA_VERSION}-devel" in text and "-runtime-ubuntu" in text
    assert '"--attentionexport"' in text
    lines = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*" and {"!Makefile", "!kobold_patch/"} <= set(ignore)

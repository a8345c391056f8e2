"""The Dockerfiles (not built here): non-root, port 80, health check, state volume, a CUDA variant."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
# What `pip install .` reads (setup.py: README, package, templates, data_files).
BUILD_INPUTS = ["setup.py", "README.md", "idlakd/__init__.py", "idlakd/web/app.py", "templates/__init__.py",
                "voiceconfig.json", "etc/idlakd.conf", "idlakd.service"]


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = (REPO / "docker" / name).read_text()
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        logical.append(current.strip())
        current = ""
    return [(entry.split(None, 1)[0].upper(), entry.split(None, 1)[1] if " " in entry else "")
            for entry in logical]


def last_stage(name: str) -> list[tuple[str, str]]:
    """The instructions of the final build stage (what runs)."""
    found = instructions(name)
    start = max(i for i, (op, _) in enumerate(found) if op == "FROM")
    return found[start:]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_a_non_root_user(name: str) -> None:
    users = [args for op, args in last_stage(name) if op == "USER"]
    assert users, "the final stage must switch to a user"
    assert users[-1].split(":")[0] not in ("root", "0")
    setup = " ".join(args for op, args in last_stage(name) if op == "RUN")
    assert "useradd --system --uid 10001" in setup and users[-1] == "idlakd"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_serves_on_port_80_with_a_health_check(name: str) -> None:
    stage = last_stage(name)
    assert ("EXPOSE", "80") in stage
    env = " ".join(args for op, args in stage if op == "ENV")
    assert "IDLAKD_PORT=80" in env and "IDLAKD_HOST=0.0.0.0" in env
    [health] = [args for op, args in stage if op == "HEALTHCHECK"]
    assert "/healthz" in health and "--timeout=" in health and health.split("CMD", 1)[1].strip()
    assert "IDLAKD_PORT" in health  # follows a changed port


@pytest.mark.parametrize("name", DOCKERFILES)
def test_state_on_a_volume_and_the_daemon_as_entrypoint(name: str) -> None:
    stage = last_stage(name)
    env = " ".join(args for op, args in stage if op == "ENV")
    assert "IDLAKD_STATE_DIR=/var/lib/idlakd" in env
    assert any(op == "VOLUME" and "/var/lib/idlakd" in args for op, args in stage)
    # tini as PID 1 reaps orphans and forwards SIGTERM to idlakd alone.
    assert ("ENTRYPOINT", '["/usr/bin/tini", "--", "idlakd"]') in stage and ("CMD", '["serve"]') in stage
    assert "tini" in " ".join(args for op, args in stage if op == "RUN")
    assert ("STOPSIGNAL", "SIGTERM") in stage
    # eSpeak is the default engine: nothing but the package is needed; Idlak is mounted.
    assert "/opt/idlak" in " ".join(args for op, args in stage if op == "RUN")


def test_cpu_and_cuda_bases() -> None:
    cpu = [args for op, args in instructions("Dockerfile") if op == "FROM"]
    assert all(base.startswith("python:3.11") for base in cpu)
    cuda_file = instructions("Dockerfile.cuda")
    [arg] = [args for op, args in cuda_file if op == "ARG" and args.startswith("CUDA_IMAGE=")]
    assert arg.split("=", 1)[1].startswith("nvidia/cuda:") and "runtime" in arg
    assert all("${CUDA_IMAGE}" in args for op, args in cuda_file if op == "FROM")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_build_context_has_what_pip_needs(name: str) -> None:
    ignore = (REPO / "docker" / f"{name}.dockerignore").read_text().split("\n")
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    for path in BUILD_INPUTS:
        assert (REPO / path).exists(), path
        assert not any(fnmatch.fnmatch(path, p.removeprefix("**/")) or path.startswith(p.rstrip("/") + "/")
                       for p in patterns), f"{path} would be left out of the build context"
    assert any("secret.key" in p for p in patterns) and any(".db" in p for p in patterns)
    for op, args in instructions(name):
        if op == "COPY" and not args.startswith("--from"):
            sources = shlex.split(args)[:-1]
            assert sources == ["."], args


def test_compose_example_waits_for_the_grace_period() -> None:
    text = (REPO / "docker" / "compose.yaml").read_text()
    grace = re.search(r"stop_grace_period:\s*(\d+)s", text)
    assert grace and int(grace.group(1)) > 30
    assert "/var/lib/idlakd" in text

"""The Docker images' parts that run without Docker: the build context installs, the health check and command work."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from idlakd.cli.main import build_parser
from idlakd.config import SETTINGS, load_config

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]


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


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: '**' any directories, '*' and '?' within one."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


class DockerIgnore:
    """Docker's rule: the last pattern matching a path or one of its parents decides; '!' re-includes."""

    def __init__(self, path: Path) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
            self.rules.append((keep, _pattern_regex(pattern)))

    def excludes(self, relative: str) -> bool:
        """Whether the file or directory at this context-relative path stays out of the build."""
        parts = relative.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        excluded = False
        for keep, regex in self.rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                excluded = not keep
        return excluded


def build_context(ignore: DockerIgnore, into: Path) -> Path:
    """Copy the repository as Docker would send it as the build context."""
    for root, dirs, files in os.walk(REPO):
        rel_root = Path(root).relative_to(REPO).as_posix()
        rel = "" if rel_root == "." else rel_root + "/"
        dirs[:] = [d for d in dirs if not ignore.excludes(rel + d)]
        for name in files:
            if not ignore.excludes(rel + name):
                target = into / rel / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(root) / name, target)
    return into


@pytest.mark.parametrize("name", DOCKERFILES)
def test_build_context_has_what_pip_install_needs(name: str, tmp_path: Path) -> None:
    """The image's `pip install .` step, minus the network: build the package from the context."""
    ignore = DockerIgnore(REPO / "docker" / f"{name}.dockerignore")
    context = build_context(ignore, tmp_path / "context")
    for op, args in instructions(name):
        if op == "COPY" and not args.startswith("--"):
            for source in shlex.split(args)[:-1]:
                assert (context / source).exists(), f"COPY {source}: not in the build context"
    build, data = tmp_path / "build", tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build", "--build-base", str(build),
         "install_data", "--install-dir", str(data)],
        cwd=context, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    # The built package starts: its entry points import and the admin templates are inside.
    check = ("import importlib.resources, idlakd, idlakd.cli.main, idlakd.web.app, idlakd.worker;"
             "print(idlakd.__file__);"
             "print(importlib.resources.files('idlakd.templates').joinpath('base.html').is_file())")
    proc = subprocess.run([sys.executable, "-P", "-c", check], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(build / "lib")})
    assert proc.returncode == 0, proc.stderr
    module_file, has_templates = proc.stdout.split()
    assert module_file.startswith(str(build)) and has_templates == "True"
    assert {p.name for p in (data / "share" / "idlakd").iterdir()} >= {"voiceconfig.json"}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_build_context_leaves_state_and_secrets_out(name: str) -> None:
    ignore = DockerIgnore(REPO / "docker" / f"{name}.dockerignore")
    for path in ("state/secret.key", "secret.key", "idlakd.db", "state/idlakd.db-wal",
                 ".git", ".venv/bin/python", "idlakd/__pycache__/x.pyc"):
        assert ignore.excludes(path), path
    for path in ("setup.py", "README.md", "idlakd/web/app.py", "templates/base.html"):
        assert not ignore.excludes(path), path


@pytest.mark.parametrize("name", DOCKERFILES)
def test_environment_and_command_start_the_server_on_the_exposed_port(name: str, tmp_path: Path) -> None:
    """The image's ENV is read by the real settings loader; its ENTRYPOINT + CMD by the real CLI."""
    stage = last_stage(name)
    env: dict[str, str] = {}
    for op, args in stage:
        if op == "ENV":
            env.update(dict(word.split("=", 1) for word in shlex.split(args)))
    settings = {k: v for k, v in env.items() if k.startswith("IDLAKD_")}
    config = load_config(env=settings)  # an unknown IDLAKD_ key would raise here
    [exposed] = [args for op, args in stage if op == "EXPOSE"]
    assert config.host == "0.0.0.0" and config.port == int(exposed)
    assert str(config.state_dir) in [args.strip('[]" ') for op, args in stage if op == "VOLUME"]
    [entrypoint] = [json.loads(args) for op, args in stage if op == "ENTRYPOINT"]
    [command] = [json.loads(args) for op, args in stage if op == "CMD"]
    words = entrypoint + command
    program = words.index("idlakd")
    assert build_parser().parse_args(words[program + 1:]).command == "serve"


def healthcheck(name: str) -> str:
    """The shell command of a Dockerfile's HEALTHCHECK."""
    [health] = [args for op, args in last_stage(name) if op == "HEALTHCHECK"]
    return re.split(r"\s+CMD\s+", health, maxsplit=1)[1].strip()


async def run_shell(command: str, port: int) -> int:
    """Run a shell command as Docker runs a health check (sh -c), with IDLAKD_PORT set."""
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", command, env={**os.environ, "PATH": path, "IDLAKD_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), timeout=30)


@pytest.mark.parametrize("name", DOCKERFILES)
async def test_health_check_passes_on_a_live_server_only(name: str,
                                                         client: TestClient[Any, Any]) -> None:
    port = client.port
    assert port is not None
    assert await run_shell(healthcheck(name), port) == 0
    await client.close()
    assert await run_shell(healthcheck(name), port) != 0


def test_compose_waits_longer_than_the_grace_period() -> None:
    grace = re.search(r"stop_grace_period:\s*(\d+)s", (REPO / "docker" / "compose.yaml").read_text())
    default = sum(float(s.default) for s in SETTINGS
                  if s.name in ("drain_seconds", "shutdown_grace_seconds"))
    assert grace and int(grace.group(1)) > default

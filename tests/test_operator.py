"""The operator's rough edges (issue 11, item 5), from outside: the `idlakd` command as a
subprocess against temporary state directories, and real daemons restarted on them."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.helpers.admin import admin_client
from tests.helpers.app import REPO, make_config
from tests.helpers.daemon import (Daemon, free_port, start_daemon, wait_listening,
                                  write_voice_config)
from tests.helpers.postgres import state_env

SERVICE_HINT = "sudo -u idlakd idlakd --config /etc/idlakd/idlakd.conf"
ALBA = ("voice", "add", "-e", "espeak", "-g", "female", "-n", "Alba", "-i", "alba",
        "-l", "en", "-a", "gb", "-o", '{"voice": "en-gb"}')


def idlakd(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command line against a state directory (and nothing from the caller's env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDLAKD_")}
    env |= {**state_env(state), "IDLAKD_BCRYPT_ROUNDS": "4"}
    return subprocess.run([sys.executable, "-m", "idlakd", *args], capture_output=True,
                          text=True, env=env, timeout=60, cwd=REPO)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded."""
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def new_state(tmp_path: Path) -> Path:
    """A state directory with a database and an admin 'boss', made on purpose."""
    state = tmp_path / "state"
    ok(idlakd(state, "user", "add", "boss", "--admin", "--new-database"))
    return state


async def status_of(daemon: Daemon, path: str) -> int:
    """The status of one GET against the daemon."""
    async with aiohttp.ClientSession() as session:
        async with session.get(daemon.url + path) as resp:
            return resp.status


async def restarted(daemon: Daemon, tmp_path: Path) -> Daemon:
    """Stop a daemon with SIGTERM and start a new one on the same state directory."""
    daemon.signal()
    assert await daemon.wait(timeout=30) == 0, daemon.log()
    again = start_daemon(tmp_path)
    await wait_listening(again)
    return again


# Removed voices stay removed

async def test_a_removed_voice_stays_removed_across_restarts(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    state = tmp_path / "state"
    try:
        await wait_listening(daemon)
        assert await status_of(daemon, "/voices/alba") == 200  # seeded from voiceconfig.json
        out = ok(idlakd(state, "voice", "remove", "-i", "alba"))
        assert out == ("Voice 'alba' removed; voiceconfig.json will not bring it back; "
                       "`idlakd voice add` does\n")
        assert await status_of(daemon, "/voices/alba") == 404
        daemon = await restarted(daemon, tmp_path)
        # voiceconfig.json still lists it: the start seeds the others, not this one.
        assert await status_of(daemon, "/voices/alba") == 404
        assert await status_of(daemon, "/voices/slow") == 200
        assert "removed by an operator (idlakd voice add brings one back): alba" in daemon.log()
        listing = idlakd(state, "voice", "list")
        assert "alba\t" not in ok(listing)
        assert "removed, not loaded from voiceconfig.json: alba" in listing.stderr
        # An explicit add brings it back at once, and later starts keep it.
        assert ok(idlakd(state, *ALBA)).startswith("Voice 'alba' (Alba, en-gb, female, espeak)")
        assert await status_of(daemon, "/voices/alba") == 200
        daemon = await restarted(daemon, tmp_path)
        assert await status_of(daemon, "/voices/alba") == 200
        assert "not loaded from voiceconfig.json" not in idlakd(state, "voice", "list").stderr
    finally:
        daemon.kill()


async def test_a_voice_removed_on_the_admin_page_stays_removed(
        tmp_path: Path, started_app_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path)
    client: TestClient[Any, Any] = await started_app_factory(config)
    password = capsys.readouterr().out.split("<User admin:")[1].split(":True>")[0]
    csrf = await admin_client(client, password)
    page = await (await client.post("/admin/voices/alba/remove",
                                    data={"csrf_token": csrf})).text()
    assert ("Voice &#39;alba&#39; removed; voiceconfig.json will not bring it back" in page)
    await client.close()
    again: TestClient[Any, Any] = await started_app_factory(config)  # a restart
    assert (await again.get("/voices/alba")).status == 404
    assert (await again.get("/voices")).status in (200, 204)


# Which database, and never a new one by accident

@pytest.mark.sqlite_only("the path of the SQLite file each command names")
def test_every_command_names_its_database(tmp_path: Path) -> None:
    state = new_state(tmp_path)
    line = f"idlakd: database {state / 'idlakd.db'}"
    for args in (("user", "list"), ("voice", "list"), ("user", "add", "carol"),
                 ("admin", "grant", "carol"), ("backup", str(tmp_path / "copy.db"))):
        proc = idlakd(state, *args)
        ok(proc)
        assert proc.stderr.splitlines()[0] == line, (args, proc.stderr)
    # Also when the command then fails or is refused.
    failed = idlakd(state, "user", "delete", "nobody")
    assert failed.returncode == 1 and failed.stderr.splitlines()[0] == line
    missing = tmp_path / "elsewhere"
    refused = idlakd(missing, "user", "list")
    assert refused.stderr.splitlines()[0] == f"idlakd: database {missing / 'idlakd.db'}"


@pytest.mark.sqlite_only("a missing SQLite file is not created by accident")
def test_commands_refuse_to_create_a_database(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for args in (("user", "list"), ("user", "add", "bob"), ("user", "passwd", "admin"),
                 ("voice", "list"), ("voice", "remove", "-i", "alba"), ALBA,
                 ("admin", "grant", "bob")):
        proc = idlakd(state, *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stdout == ""
        message = proc.stderr.splitlines()[-1]
        assert f"no database at {state / 'idlakd.db'}" in message
        assert "--config" in message and SERVICE_HINT in message, message
        assert not state.exists(), args  # not even the directory
    # On purpose it works, and then the database is simply there.
    ok(idlakd(state, "user", "add", "bob", "--admin", "--new-database"))
    assert ok(idlakd(state, "user", "list")) == "bob\tadmin\n"


@pytest.mark.sqlite_only("root leaving files in another user's SQLite state directory")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_is_refused_on_another_users_state(tmp_path: Path) -> None:
    state = new_state(tmp_path)
    ok(idlakd(state, *ALBA))
    other = 65534
    for path in (state, *state.iterdir()):
        os.chown(path, other, other)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in state.iterdir())
    name = pwd.getpwuid(other).pw_name
    for args in (("user", "add", "carol"), ("user", "passwd", "boss"), ("user", "delete", "boss"),
                 ("admin", "revoke", "boss"), ("voice", "remove", "-i", "alba"), ALBA,
                 ("backup", str(tmp_path / "copy.db"))):
        proc = idlakd(state, *args)
        assert proc.returncode in (1, 2) and proc.stdout == "", (args, proc.stderr)
        assert f"sudo -u {name} idlakd --config /etc/idlakd/idlakd.conf" in proc.stderr \
            or f"run this as the database's owner (uid {other})" in proc.stderr, proc.stderr
        if args[0] != "backup":  # backup keeps its own (older) wording and exit status
            assert proc.returncode == 2 and "refusing to run as root" in proc.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in state.iterdir()) == before
    assert all(p.stat().st_uid == other for p in state.iterdir())
    # Reading changes nothing: allowed.
    assert ok(idlakd(state, "user", "list")) == "boss\tadmin\n"


# Admin rights from the shell

def test_admin_grant_and_revoke_keep_the_last_admin(tmp_path: Path) -> None:
    state = new_state(tmp_path)
    ok(idlakd(state, "user", "add", "carol"))
    assert ok(idlakd(state, "admin", "grant", "carol")) == "User 'carol' is now an admin\n"
    assert ok(idlakd(state, "user", "list")) == "boss\tadmin\ncarol\tadmin\n"
    assert ok(idlakd(state, "admin", "grant", "carol")) == "User 'carol' is now an admin\n"
    assert ok(idlakd(state, "admin", "revoke", "boss")) == "User 'boss' is no longer an admin\n"
    last = idlakd(state, "admin", "revoke", "carol")
    assert last.returncode == 1 and "'carol' is the only admin" in last.stderr
    ghost = idlakd(state, "admin", "grant", "ghost")
    assert ghost.returncode == 1 and "user 'ghost' does not exist" in ghost.stderr
    assert ok(idlakd(state, "user", "list")) == "boss\tuser\ncarol\tadmin\n"


async def test_a_grant_from_the_shell_is_served_at_once(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    state = tmp_path / "state"
    try:
        await wait_listening(daemon)
        password = ok(idlakd(state, "user", "add", "carol")).split(":")[1]
        async with aiohttp.ClientSession(daemon.url) as http:
            async with http.post("/auth", json={"uid": "carol", "password": password}) as resp:
                token = (await resp.json())["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get("/users", headers=headers) as resp:
                assert resp.status == 401
            ok(idlakd(state, "admin", "grant", "carol"))
            async with http.get("/users", headers=headers) as resp:
                assert resp.status == 200
    finally:
        daemon.kill()


# Listing, help, --set

def test_voice_list_has_a_header(tmp_path: Path) -> None:
    state = new_state(tmp_path)
    assert ok(idlakd(state, "voice", "list")) == \
        "ID\tNAME\tLANGUAGE\tACCENT\tGENDER\tENGINE\tDIRECTORY\n"
    ok(idlakd(state, *ALBA))
    lines = ok(idlakd(state, "voice", "list")).splitlines()
    assert lines[0].split("\t")[:2] == ["ID", "NAME"]
    assert lines[1] == "alba\tAlba\ten\tgb\tfemale\tespeak\t-"


def test_serve_help_shows_every_setting_with_its_default() -> None:
    help_text = ok(idlakd(Path("/nonexistent"), "serve", "--help"))
    assert "--port PORT" in help_text and "default: 8080" in help_text
    assert "--set KEY=VALUE" in help_text
    flat = " ".join(help_text.split())
    for line in ("max_body_bytes = 1048576", "header_timeout_seconds = 10", "log_level = INFO",
                 "Largest accepted request body in bytes (413 above).",
                 "Require access tokens. 'false' opens every route to anyone"):
        assert line in flat, line


@pytest.mark.sqlite_only("--set state_dir choosing the SQLite file")
def test_set_is_accepted_after_the_command(tmp_path: Path) -> None:
    state = new_state(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    # After the command it is read (and wins over one before it).
    proc = idlakd(elsewhere, "--set", f"state_dir={elsewhere}", "user", "list",
                  "--set", f"state_dir={state}")
    assert ok(proc) == "boss\tadmin\n"
    assert proc.stderr.splitlines()[0] == f"idlakd: database {state / 'idlakd.db'}"
    bad = idlakd(state, "serve", "--set", "port=x")
    assert bad.returncode == 2 and "'port'" in bad.stderr
    broken = idlakd(state, "serve", "--set", "port")
    assert broken.returncode == 2 and "--set expects KEY=VALUE" in broken.stderr


async def test_serve_takes_set_after_the_command(tmp_path: Path) -> None:
    """`idlakd serve --set port=N` listens on N."""
    port = free_port()
    voices = write_voice_config(tmp_path / "voices")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDLAKD_")}
    with open(tmp_path / "serve.err", "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "idlakd", "serve", "--set", f"state_dir={tmp_path / 's2'}",
             "--set", "bcrypt_rounds=4", "--set", f"port={port}", "--set", "drain_seconds=0",
             "--set", f"voice_config={voices}"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    served = Daemon(process, port, tmp_path / "serve.out", tmp_path / "serve.err")
    try:
        await wait_listening(served)
        assert f"idlakd: database {tmp_path / 's2' / 'idlakd.db'}" in served.log()
    finally:
        served.kill()


def test_documented_install_creates_the_database_on_purpose() -> None:
    """docs/operations.md's first admin from the shell works on a fresh state directory."""
    text = (REPO / "docs" / "operations.md").read_text()
    line = next(l for l in text.splitlines() if " user add admin --admin" in l)
    assert "--new-database" in line and SERVICE_HINT.split(" idlakd ")[0] in line, line
    # The refusal's hint names the config file the documented install uses.
    assert "--config /etc/idlakd/idlakd.conf" in line

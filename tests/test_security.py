"""Security cases beyond tests/test_auth.py: forged tokens, SQL metacharacters, login timing,
address throttling, file permissions, and voice directories outside the configured roots."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from yarl import URL

from idlakd.config import Config, DatabaseUrl
from idlakd.web.keys import passwords_key, store_key
from idlakd.voices.definitions import VoiceDefinitionError, voice_from_entry
from tests.helpers.app import REPO, assert_error, bearer, login, make_config, token_secret
from tests.helpers.postgres import state_env

INVALID = "Access token is invalid"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(sub: str = "admin", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "nbf": now, "exp": now + 600, "jti": os.urandom(8).hex()} | extra


# Forged tokens

async def test_alg_none_variants_are_invalid(client: TestClient[Any, Any], admin_token: str,
                                             config: Config) -> None:
    """'none' in any case, with or without a signature, and an HS256 header with no signature."""
    payload = _b64(json.dumps(_claims()).encode())
    real_sig = admin_token.split(".")[2]
    for alg in ("none", "None", "NONE", "nOnE"):
        for sig in ("", real_sig):
            token = f"{_b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{payload}.{sig}"
            await assert_error(await client.get("/users", headers=bearer(token)), 401, INVALID)
    hs_header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    unsigned = f"{hs_header}.{payload}."
    await assert_error(await client.get("/users", headers=bearer(unsigned)), 401, INVALID)
    # The server's own token with the signature of another payload (splicing).
    spliced = f"{admin_token.split('.')[0]}.{payload}.{real_sig}"
    await assert_error(await client.get("/users", headers=bearer(spliced)), 401, INVALID)


async def test_hs_rs_algorithm_confusion_is_invalid(client: TestClient[Any, Any],
                                                    admin_token: str, config: Config) -> None:
    """RS256 with a generated key, HS256 keyed with that public key, and keys in the header."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    rs256 = jwt.encode(_claims(), key, algorithm="RS256")
    await assert_error(await client.get("/users", headers=bearer(rs256)), 401, INVALID)
    # The classic confusion: an HS256 MAC keyed with the public key PEM (PyJWT refuses to make
    # one, so sign by hand).
    import hashlib
    import hmac
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(_claims()).encode())
    mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    await assert_error(await client.get("/users", headers=bearer(f"{header}.{body}.{_b64(mac)}")),
                       401, INVALID)
    # Embedded key / key URL / kid tricks: the server must use only its own secret.
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    for extra in ({"jwk": jwk}, {"jku": "http://127.0.0.1:1/keys"}, {"kid": "../../dev/null"},
                  {"x5u": "http://127.0.0.1:1/cert"}):
        token = jwt.encode(_claims(), key, algorithm="RS256", headers=extra)
        await assert_error(await client.get("/users", headers=bearer(token)), 401, INVALID)
    # An HS256 token keyed with the empty secret, and with the secret file's path as a secret.
    for weak in (b"", str(config.secret_file).encode()):
        mac = hmac.new(weak, f"{header}.{body}".encode(), hashlib.sha256).digest()
        token = f"{header}.{body}.{_b64(mac)}"
        await assert_error(await client.get("/users", headers=bearer(token)), 401, INVALID)


async def test_claims_of_the_wrong_type_are_invalid(client: TestClient[Any, Any],
                                                    admin_password: str, config: Config) -> None:
    """Signed with the real secret but with claims of the wrong type or value: never accepted."""
    secret = (await token_secret(config))
    now = int(time.time())
    for bad in ({"sub": 1}, {"sub": ["admin"]}, {"sub": None}, {"jti": 5}, {"exp": "later"},
                {"exp": now + 10 ** 12, "nbf": "x"}, {"iat": "yesterday"}, {"sub": ""}):
        token = jwt.encode(_claims() | bad, secret, algorithm="HS256")
        resp = await client.get("/users", headers=bearer(token))
        await assert_error(resp, 401)
        assert (await resp.json())["message"] in (INVALID, "The user with such access token does not exist")
    # iat in the future is not a reason to trust a token more: it still needs a real user.
    token = jwt.encode(_claims("ghost", iat=now + 3600), secret, algorithm="HS256")
    resp = await client.get("/users", headers=bearer(token))
    await assert_error(resp, 401)
    assert (await resp.json())["message"] in (INVALID, "The user with such access token does not exist")
    # A valid token of a non-admin cannot reach admin routes by claiming admin.
    token = jwt.encode(_claims("admin2", admin=True, role="admin"), secret, algorithm="HS256")
    await assert_error(await client.get("/users", headers=bearer(token)), 401,
                       "The user with such access token does not exist")


async def test_revocation_survives_token_replay_with_other_header_forms(
        client: TestClient[Any, Any], admin_password: str) -> None:
    """A revoked token stays revoked whatever form the Authorization header takes."""
    token = await login(client, "admin", admin_password)
    assert (await client.post("/auth/expire", headers=bearer(token))).status == 200
    for header in (token, f"bearer {token}", f"BEARER   {token}  ", f"Bearer\t{token}"):
        await assert_error(await client.get("/users", headers={"Authorization": header}), 401,
                           "Access token has expired")


async def test_token_of_a_deleted_user_stays_dead_when_the_uid_is_reused(
        client: TestClient[Any, Any], admin_token: str) -> None:
    """Deleting alice and creating a new alice must not revive the first alice's tokens."""
    h = bearer(admin_token)
    first = await client.post("/users", json={"uid": "alice"}, headers=h)
    old_token = await login(client, "alice", (await first.json())["password"])
    assert (await client.post("/speech", json={"voice_id": "nope", "text": "x"},
                              headers=bearer(old_token))).status == 400  # valid until deleted
    assert (await client.delete("/users/alice", headers=h)).status == 200
    # No pause: tokens carry their issue instant to the nanosecond (tests/test_token_hygiene.py).
    second = await client.post("/users", json={"uid": "alice", "admin": True}, headers=h)
    assert second.status == 200
    await assert_error(await client.get("/users", headers=bearer(old_token)), 401,
                       "The user with such access token does not exist")
    new_token = await login(client, "alice", (await second.json())["password"])
    assert (await client.get("/users", headers=bearer(new_token))).status == 200


# SQL metacharacters

SQL_PAYLOADS = ("'", "''", "\"", "a' OR '1'='1", "x'; DROP TABLE users; --", "admin'--",
                "%", "_", "*", "\\", "a;b", "1 UNION SELECT uid, password_hash FROM users",
                "') OR 1=1 --", "`", "$1", "?", ":uid", "@uid", "\u02bc OR 1=1")


async def test_sql_metacharacters_in_every_path_and_body_field(
        tmp_path: Path, started_app_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Every string that reaches SQL is bound: metacharacters are data, never code."""
    config = make_config(tmp_path, login_max_failures="1000", login_max_failures_per_address="1000")
    client: TestClient[Any, Any] = await started_app_factory(config)
    password = capsys.readouterr().out.split("<User admin:")[1].split(":True>")[0]
    h = bearer(await login(client, "admin", password))
    for payload in SQL_PAYLOADS:
        seg = quote(payload, safe="")
        # Path parameters
        for method, path in (("GET", f"/voices/{seg}"), ("GET", f"/languages/{seg}/accents"),
                             ("POST", f"/users/{seg}/password"), ("DELETE", f"/users/{seg}"),
                             ("POST", f"/users/{seg}/admin")):
            resp = await client.request(method, URL(path, encoded=True), headers=h)
            expected = 404 if path.startswith(("/voices", "/languages")) else 422
            await assert_error(resp, expected)
        # Query string and body filters
        assert (await client.get("/voices", params={"language": payload})).status == 204
        assert (await client.post("/voices", json={"language": payload, "accent": payload})).status == 204
        await assert_error(await client.post("/voices", json={"gender": payload}), 422,
                           contains="Not a valid choice")
        # Login fields
        await assert_error(await client.post("/auth", json={"uid": payload, "password": payload}),
                           401, "Login details are incorrect")
        await assert_error(await client.post("/auth", json={"uid": "admin' --", "password": ""}),
                           401, "Login details are incorrect")
        # /speech fields
        resp = await client.post("/speech", headers=h,
                                 json={"voice_id": payload, "text": payload})
        await assert_error(resp, 400, "Voice could not be found")
    # A user whose uid is all metacharacters (refused for new users since issue 9, so created
    # as an older idlakd did, in the database) round-trips through every user route.
    for payload in ("x';DROP(TABLE)users;--", "a'OR'1'='1", "%_\\?"):
        await assert_error(await client.post("/users", json={"uid": payload}, headers=h), 422,
                           contains="uid:")
        password = "legacy-password"
        app = client.app
        assert await app[store_key].add_user(payload, await app[passwords_key].hash(password), False)
        await login(client, payload, password)
        seg = quote(payload, safe="")
        toggled = await client.post(URL(f"/users/{seg}/admin", encoded=True), headers=h)
        assert await toggled.json() == {"uid": payload, "admin": True}
        reset = await client.post(URL(f"/users/{seg}/password", encoded=True), headers=h)
        await login(client, payload, (await reset.json())["password"])
        # No wildcard matched another user: admin's password still works only for admin.
        await assert_error(await client.post("/auth", json={"uid": payload, "password": password}), 401)
    users = (await (await client.get("/users", headers=h)).json())["users"]
    assert {u["id"] for u in users} == {"admin", "x';DROP(TABLE)users;--", "a'OR'1'='1", "%_\\?"}
    odd = "%_\\?"
    deleted = await client.delete(URL(f"/users/{quote(odd, safe='')}", encoded=True), headers=h)
    assert await deleted.json() == {"message": "User '%_\\?' has been deleted"}
    # The schema is intact and the voices are all still there.
    store = client.app[store_key]
    # Every entry of the repository's list (its piper voice too: the test extra installs piper).
    listed = len(json.loads((REPO / "voiceconfig.json").read_text(encoding="utf-8")))
    assert await store.count_users() == 3 and len(await store.list_voices()) == listed
    if not isinstance(config.database, DatabaseUrl):  # and the SQLite file is sound
        with sqlite3.connect(config.database) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            assert {"users", "voices", "revoked_tokens"} <= tables
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# Login timing and throttling

async def test_login_timing_unknown_uid_vs_wrong_password(tmp_path: Path,
                                                          started_app_factory: Any) -> None:
    """An unknown uid costs what a wrong password costs: the medians differ by less than noise."""
    cfg = make_config(tmp_path, bcrypt_rounds="8", login_max_failures="1000",
                      login_max_failures_per_address="1000")
    client: TestClient[Any, Any] = await started_app_factory(cfg)
    app = client.app
    await app[store_key].add_user("carol", await app[passwords_key].hash("right-password"), False)

    async def timed(body: dict[str, str]) -> float:
        start = time.perf_counter()
        resp = await client.post("/auth", json=body)
        elapsed = time.perf_counter() - start
        await assert_error(resp, 401, "Login details are incorrect")
        return elapsed

    known: list[float] = []
    unknown: list[float] = []
    for i in range(30):  # interleaved, so load from other processes hits both alike
        known.append(await timed({"uid": "carol", "password": f"wrong-{i}"}))
        unknown.append(await timed({"uid": f"nobody-{i}", "password": f"wrong-{i}"}))
    med_known, med_unknown = statistics.median(known), statistics.median(unknown)
    # bcrypt at 8 rounds costs milliseconds; skipping it for unknown uids would halve the time.
    assert med_known > 0.003, med_known
    assert abs(med_known - med_unknown) < max(0.25 * max(med_known, med_unknown), 0.003), \
        (med_known, med_unknown)


async def test_throttling_per_address_across_uids(tmp_path: Path, started_app_factory: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Many uids from one address: the address limit answers 429 even for a new uid."""
    cfg = make_config(tmp_path, login_max_failures="100", login_max_failures_per_address="5")
    client: TestClient[Any, Any] = await started_app_factory(cfg)
    password = capsys.readouterr().out.split("<User admin:")[1].split(":True>")[0]
    for i in range(5):
        await assert_error(await client.post("/auth", json={"uid": f"u{i}", "password": "x"}), 401)
    resp = await client.post("/auth", json={"uid": "fresh", "password": "x"})
    await assert_error(resp, 429)
    assert int(resp.headers["Retry-After"]) >= 1
    # Even the right password from this address waits: a sprayer cannot tell hits from misses.
    await assert_error(await client.post("/auth", json={"uid": "admin", "password": password}), 429)


async def test_change_password_is_throttled(tmp_path: Path, started_app_factory: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Guessing the old password through /auth/password is throttled like /auth."""
    cfg = make_config(tmp_path, login_max_failures="3")
    client: TestClient[Any, Any] = await started_app_factory(cfg)
    password = capsys.readouterr().out.split("<User admin:")[1].split(":True>")[0]
    token = await login(client, "admin", password)
    for i in range(3):
        resp = await client.post("/auth/password", headers=bearer(token),
                                 json={"old_password": f"guess-{i}", "new_password": "n3w-passw0rd"})
        await assert_error(resp, 422, contains="old_password")
    resp = await client.post("/auth/password", headers=bearer(token),
                             json={"old_password": password, "new_password": "n3w-passw0rd"})
    await assert_error(resp, 429)


# Files on disk

@pytest.mark.sqlite_only("the modes of the SQLite database, its WAL and SHM files")
async def test_state_files_are_owner_only_even_with_a_lax_umask(tmp_path: Path,
                                                                started_app_factory: Any) -> None:
    """Secret, database, its WAL and SHM, and the state directory: no group/other bits."""
    old = os.umask(0o002)
    try:
        cfg = make_config(tmp_path)
        client: TestClient[Any, Any] = await started_app_factory(cfg)
        await client.post("/auth", json={"uid": "x", "password": "y"})  # some database traffic
        state = Path(cfg.state_dir)
        assert state.stat().st_mode & 0o077 == 0, oct(state.stat().st_mode)
        for path in (cfg.secret_file, cfg.database, Path(f"{cfg.database}-wal"),
                     Path(f"{cfg.database}-shm")):
            if path.exists():
                assert path.stat().st_mode & 0o077 == 0, (path, oct(path.stat().st_mode))
        assert Path(f"{cfg.database}-wal").exists()  # WAL mode: the check above did run on it
    finally:
        os.umask(old)


async def test_secret_never_served(client: TestClient[Any, Any], admin_token: str,
                                   config: Config) -> None:
    """No route, document or error leaks the signing secret or a password hash."""
    secret = (await token_secret(config)).decode()
    for method, path in (("GET", "/openapi.json"), ("GET", "/users"), ("GET", "/voices"),
                         ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/docs"),
                         ("GET", "/metrics"), ("GET", "/nope")):
        resp = await client.request(method, path, headers=bearer(admin_token))
        text = await resp.text()
        assert secret not in text and "$2b$" not in text, path
        assert str(config.state_dir) not in text, path


# Voice directories outside the configured roots

def _cli(state: Path, *args: str, voice_roots: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command line against a state directory, with voice_roots set."""
    env = os.environ | {**state_env(state), "IDLAKD_BCRYPT_ROUNDS": "4",
                        "IDLAKD_VOICE_ROOTS": voice_roots,
                        "IDLAKD_VOICE_CONFIG": str(REPO / "voiceconfig.json"),
                        "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "idlakd", *args], capture_output=True, text=True,
                          env=env, timeout=60, cwd=cwd)


def test_voice_directory_traversal_via_cli_is_refused(tmp_path: Path) -> None:
    """`voice add -d ../../etc`, an absolute path outside, and a symlink out of the root."""
    root = tmp_path / "voices"
    inside = root / "abr"
    inside.mkdir(parents=True)
    (inside / "voice.conf").write_text("lng=en\nacc=gb\n")
    (root / "escape").symlink_to("/etc")
    state = tmp_path / "state"
    cfg = make_config(tmp_path, voice_roots=str(root))
    for directory in ("/etc", str(root / ".." / ".." / "etc"), str(root) + "/abr/../../../etc",
                      "~/../../etc", str(root) + "-sibling", "/"):
        entry = {"vid": "evil", "name": "Evil", "gender": "male", "lang": "en", "acc": "gb",
                 "engine": "espeak", "dir": directory}
        with pytest.raises(VoiceDefinitionError, match="outside the configured voice_roots"):
            voice_from_entry(entry, cfg, base=inside)
    for directory in ("../../etc", str(root / "escape")):  # through the real command line
        proc = _cli(state, "voice", "add", "-g", "female", "-n", "Evil", "-i", "evil",
                    "-e", "espeak", "-l", "en", "-a", "gb", "-d", directory, "--new-database",
                    voice_roots=str(root), cwd=inside)
        assert proc.returncode == 1, (directory, proc.stdout, proc.stderr)
        assert "outside the configured voice_roots" in proc.stderr, proc.stderr
    listing = _cli(state, "voice", "list", "--new-database", voice_roots=str(root), cwd=tmp_path)
    assert listing.returncode == 0 and "evil" not in listing.stdout
    # Inside the root (also relative, resolved against the working directory) is accepted.
    proc = _cli(state, "voice", "add", "-g", "female", "-n", "Good", "-i", "good", "-e", "espeak",
                "-l", "en", "-a", "gb", "-d", ".", voice_roots=str(root), cwd=inside)
    assert proc.returncode == 0, proc.stderr
    assert str(inside.resolve()) in _cli(state, "voice", "list", voice_roots=str(root),
                                         cwd=tmp_path).stdout


async def test_voiceconfig_entry_outside_roots_is_skipped(tmp_path: Path,
                                                          started_app_factory: Any) -> None:
    """A voiceconfig.json entry with dir ../../etc is skipped at start; the rest load."""
    root = tmp_path / "voices"
    root.mkdir()
    config_file = tmp_path / "voiceconfig.json"
    config_file.write_text(json.dumps([
        {"vid": "evil", "name": "Evil", "gender": "male", "lang": "en", "acc": "gb",
         "engine": "espeak", "dir": "../../etc"},
        {"vid": "alba", "name": "Alba", "gender": "female", "lang": "en", "acc": "gb",
         "engine": "espeak", "options": {"voice": "en-gb"}},
    ]))
    cfg = make_config(tmp_path, voice_config=str(config_file), voice_roots=str(root))
    client: TestClient[Any, Any] = await started_app_factory(cfg)
    await assert_error(await client.get("/voices/evil"), 404, "Voice could not be found")
    assert (await client.get("/voices/alba")).status == 200


# The admin page: the same rules as the API and the CLI

async def test_voice_directory_traversal_via_admin_page_is_refused(
        tmp_path: Path, started_app_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A voice directory outside voice_roots, however spelled, is refused by the admin form."""
    from tests.helpers.admin import admin_client

    root = tmp_path / "voices"
    (root / "abr").mkdir(parents=True)
    (root / "abr" / "voice.conf").write_text("lng=en\nacc=gb\n")
    (root / "escape").symlink_to(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "voice.conf").write_text("lng=en\nacc=gb\n")
    cfg = make_config(tmp_path, voice_roots=str(root))
    client: TestClient[Any, Any] = await started_app_factory(cfg)
    password = capsys.readouterr().out.split("<User admin:")[1].split(":True>")[0]
    csrf = await admin_client(client, password)
    base = {"csrf_token": csrf, "id": "evil", "name": "Evil", "gender": "male",
            "engine": "espeak", "lang": "en", "acc": "gb", "options": ""}
    for directory in (str(outside), f"{root}/../outside", f"{root}/escape/outside", "/etc",
                      f"{root}/abr/../../outside"):
        resp = await client.post("/admin/voices", data=dict(base, dir=directory))
        page = await resp.text()
        assert resp.status == 422 and "outside the configured voice_roots" in page, (directory, page[-500:])
    await assert_error(await client.get("/voices/evil"), 404, "Voice could not be found")
    resp = await client.post("/admin/voices", data=dict(base, id="good", dir=f"{root}/abr"))
    assert resp.status == 200, (await resp.text())[-500:]


async def test_admin_session_of_a_deleted_user_stays_dead_when_the_uid_is_reused(
        client: TestClient[Any, Any], admin_token: str) -> None:
    """Like API tokens: deleting 'boss' and creating a new 'boss' must not revive the old session."""
    from tests.helpers.admin import sign_in

    h = bearer(admin_token)
    first = await (await client.post("/users", json={"uid": "boss", "admin": True}, headers=h)).json()
    assert (await sign_in(client, "boss", first["password"])).status == 303
    assert (await client.get("/admin/users", allow_redirects=False)).status == 200
    assert (await client.delete("/users/boss", headers=h)).status == 200
    assert (await client.post("/users", json={"uid": "boss", "admin": True}, headers=h)).status == 200
    resp = await client.get("/admin/users", allow_redirects=False)
    assert resp.status == 303, "the first boss's session cookie opened the new boss's admin page"


async def test_parallel_guesses_do_not_slip_past_the_throttle(
        tmp_path: Path, started_app_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """40 wrong passwords at once with a limit of 3: 3 are checked, 37 get 429 (they all used
    to pass the check before the first failure was counted); parallel right ones all succeed."""
    cfg = make_config(tmp_path, login_max_failures="3", bcrypt_rounds="6")
    client: TestClient[Any, Any] = await started_app_factory(cfg)
    password = capsys.readouterr().out.split("<User admin:")[1].split(":True>")[0]
    app = client.app
    await app[store_key].add_user("carol", await app[passwords_key].hash("carols-password"), False)

    async def status(uid: str, guess: str) -> int:
        return (await client.post("/auth", json={"uid": uid, "password": guess})).status

    statuses = await asyncio.gather(*(status("admin", f"guess-{i}") for i in range(40)))
    assert statuses.count(401) == 3 and statuses.count(429) == 37, statuses
    # Concurrent logins with the right password are not mistaken for a flood.
    statuses = await asyncio.gather(*(status("carol", "carols-password") for _ in range(10)))
    assert statuses == [200] * 10, statuses
    await assert_error(await client.post("/auth", json={"uid": "admin", "password": password}), 429)


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (to be a 'remote' peer without a network)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing address
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


async def test_metrics_refused_to_a_real_non_loopback_peer(tmp_path: Path) -> None:
    """A peer on a real non-loopback address gets 403 from /metrics, with or without forged headers."""
    from aiohttp.test_utils import TestServer

    from idlakd.web.app import create_app

    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to be a remote peer from")
    server = TestServer(create_app(make_config(tmp_path)), host=address)
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    try:
        for headers in ({}, {"X-Forwarded-For": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"},
                        {"X-Real-IP": "127.0.0.1"}, {"Host": "localhost"}):
            await assert_error(await client.get("/metrics", headers=headers), 403)
        assert (await client.get("/voices")).status == 200
    finally:
        await client.close()

"""Settings: the table, etc/idlakd.conf, precedence, and one clear line for a bad value."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from idlakd.config import SETTINGS, ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def test_etc_conf_documents_every_setting_with_its_default() -> None:
    text = (REPO / "etc" / "idlakd.conf").read_text()
    documented = dict(re.findall(r"^# (\w+) = ?(.*)$", text, flags=re.M))
    assert documented == {s.name: s.default for s in SETTINGS}


def test_defaults_and_state_dir(tmp_path: Path) -> None:
    cfg = load_config(env={"STATE_DIRECTORY": str(tmp_path)})
    assert cfg.port == 8080 and cfg.token_expiration_minutes == 30 and cfg.authorization
    assert cfg.database == tmp_path / "idlakd.db"
    assert cfg.secret_file == tmp_path / "secret.key"


def test_precedence_file_env_override(tmp_path: Path) -> None:
    ini = tmp_path / "idlakd.conf"
    ini.write_text("[idlakd]\nport = 9000\nhost = 0.0.0.0\ntoken_expiration_minutes = 5\n")
    cfg = load_config(ini, env={"IDLAKD_PORT": "9100"}, overrides={"host": "127.0.0.2"})
    assert (cfg.port, cfg.host, cfg.token_expiration_minutes) == (9100, "127.0.0.2", 5)
    cfg = load_config(env={"IDLAKD_CONFIG": str(ini)})
    assert cfg.port == 9000


@pytest.mark.parametrize("key,value,needle", [
    ("port", "eighty", "'port'"),
    ("port", "70000", "'port'"),
    ("authorization", "maybe", "'authorization'"),
    ("log_level", "LOUD", "'log_level'"),
    ("token_expiration_minutes", "0", "'token_expiration_minutes'"),
    ("synthesis_timeout_seconds", "-1", "'synthesis_timeout_seconds'"),
    ("bcrypt_rounds", "2", "'bcrypt_rounds'"),
    ("ffmpeg_spares", "-1", "'ffmpeg_spares'"),
    ("ffmpeg_spares", "17", "'ffmpeg_spares'.*0 to 16"),
    ("prewarm_workers", "sometimes", "'prewarm_workers'"),
    ("change_check_seconds", "0.01", "'change_check_seconds'.*at least 0.1"),
    ("job_claim_timeout_seconds", "0.5", "'job_claim_timeout_seconds'.*at least 1"),
])
def test_bad_values_name_the_key(key: str, value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(env={f"IDLAKD_{key.upper()}": value})


def test_unknown_key_and_bad_file(tmp_path: Path) -> None:
    ini = tmp_path / "bad.conf"
    ini.write_text("[idlakd]\nprot = 80\n")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_config(ini, env={})
    ini.write_text("no section here\n")
    with pytest.raises(ConfigError, match="not a valid INI"):
        load_config(ini, env={})
    with pytest.raises(ConfigError, match="missing.conf"):
        load_config(tmp_path / "missing.conf", env={})


def test_bad_config_stops_start_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "idlakd", "--set", f"state_dir={tmp_path}", "--set", "port=x",
         "serve"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "'port'" in proc.stderr

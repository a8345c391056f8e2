"""docs/operations.md and etc/ examples stay true: settings table, CLI lines, nginx site."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from idlakd.cli.main import build_parser
from idlakd.config import SETTINGS

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "operations.md"


def settings_table() -> str:
    """The configuration reference, generated from etc/idlakd.conf's defaults and the settings' help."""
    conf = (REPO / "etc" / "idlakd.conf").read_text()
    defaults = dict(re.findall(r"^# (\w+) = ?(.*)$", conf, flags=re.MULTILINE))
    rows = ["| setting | environment | default | meaning |", "|---|---|---|---|"]
    for setting in SETTINGS:
        default = defaults[setting.name]
        shown = f"`{default}`" if default else "(empty)"
        meaning = setting.help.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| `{setting.name}` | `IDLAKD_{setting.name.upper()}` | {shown} | {meaning} |")
    return "\n".join(rows)


def test_configuration_reference_matches_etc_idlakd_conf() -> None:
    text = DOC.read_text()
    block = re.search(r"<!-- settings:begin -->\n(.*?)\n<!-- settings:end -->", text, re.DOTALL)
    assert block, "the settings markers are missing"
    expected = settings_table()
    assert block.group(1) == expected, "regenerate the table:\n" + expected


def idlakd_command_lines() -> list[list[str]]:
    """The argument lists of every `idlakd ...` command the document shows."""
    found = []
    for line in DOC.read_text().splitlines():
        match = re.search(r"(?:/opt/idlakd/bin/|docker exec idlakd )idlakd (--config \S+ )?([a-z][^#|`']*)", line)
        if match and "pip" not in line:
            # Command substitutions ($(date +%F)) stand for one word.
            words = shlex.split(re.sub(r"\$\([^)]*\)", "X", match.group(2).strip()))
            found.append(words)
    return found


def test_documented_commands_parse() -> None:
    commands = idlakd_command_lines()
    assert {c[0] for c in commands} >= {"user", "voice", "backup"}
    parser = build_parser()
    for words in commands:
        args = parser.parse_args(["--config", "/etc/idlakd/idlakd.conf", *words])
        assert args.command == words[0]


def test_unit_and_doc_agree_on_paths() -> None:
    unit = (REPO / "idlakd.service").read_text()
    text = DOC.read_text()
    assert "ExecStart=/opt/idlakd/bin/idlakd --config /etc/idlakd/idlakd.conf serve" in unit
    assert "state_dir = /var/lib/idlakd" in text and "StateDirectory=idlakd" in unit
    assert "sudo install -m 0644 idlakd.service /etc/systemd/system/idlakd.service" in text


@pytest.fixture
def nginx() -> str:
    """The example nginx site."""
    return (REPO / "etc" / "nginx" / "idlakd.conf").read_text()


def test_nginx_site_streams_over_tls(nginx: str) -> None:
    code = "\n".join(line.split("#", 1)[0] for line in nginx.splitlines())
    assert re.search(r"listen 443 ssl;", code) and "ssl_certificate " in code
    assert "ssl_certificate_key " in code and "TLSv1.3" in code
    assert "proxy_buffering off;" in code and "proxy_http_version 1.1;" in code
    assert "proxy_pass http://idlakd;" in code and "server 127.0.0.1:8080;" in code
    assert re.search(r"location = /metrics \{ return 404; \}", code)
    assert "return 301 https://" in code
    assert code.count("{") == code.count("}")
    assert "client_max_body_size 1m;" in code  # = max_body_bytes' default
    assert next(s.default for s in SETTINGS if s.name == "max_body_bytes") == str(1024 * 1024)

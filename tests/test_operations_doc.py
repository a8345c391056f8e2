"""docs/operations.md and etc/ stay true: the settings table, CLI lines the real parser takes, nginx limits."""

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


@pytest.fixture
def nginx() -> str:
    """The example nginx site, comments removed."""
    text = (REPO / "etc" / "nginx" / "idlakd.conf").read_text()
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _nginx_size(value: str) -> int:
    """An nginx size (k and m suffixes, 1024-based) in bytes."""
    units = {"k": 1 << 10, "m": 1 << 20}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].isalpha() else int(value)


def test_nginx_site_fits_the_default_settings(nginx: str) -> None:
    """The proxy takes the bodies idlakd takes, and forwards to where idlakd listens by default."""
    defaults = {s.name: s.default for s in SETTINGS}
    [size] = re.findall(r"client_max_body_size (\w+);", nginx)
    assert _nginx_size(size) == int(defaults["max_body_bytes"])
    [upstream] = re.findall(r"upstream idlakd \{\s*server ([\d.]+:\d+);", nginx)
    assert upstream == f"{defaults['host']}:{defaults['port']}"

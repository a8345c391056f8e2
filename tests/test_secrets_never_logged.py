"""Runs last: no password or token the suite used appears in any log line of the run."""

from __future__ import annotations

import logging

from tests.conftest import log_recorder


def test_no_password_or_token_in_any_log_line_of_the_run() -> None:
    recorder = log_recorder()
    # A canary proves the recording works: a leak of it must be found.
    canary = "canary-secret-0123456789"
    logging.getLogger("idlakd.test").info("leaking %s", canary)
    assert any(canary in line for line in recorder.lines)
    blob = "\n".join(line for line in recorder.lines if canary not in line)
    leaked = sorted(s for s in recorder.secrets if len(s) >= 8 and s in blob)
    assert not leaked, f"{len(leaked)} secrets appear in logs, e.g. {leaked[0][:6]}..."

"""`idlakd serve`: logging set up off the loop, then the daemon until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import queue
import textwrap
from typing import Final

from idlakd import __version__
from idlakd.cli.log_batches import (BatchedFileHandler, BatchedStreamHandler, BatchingListener,
                                    LineQueueHandler, SecondFormatter, stderr_stream)
from idlakd.cli.log_repeats import RepeatFilter
from idlakd.config import SETTINGS, Config, Setting

log = logging.getLogger(__name__)

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(config: Config) -> logging.handlers.QueueListener:
    """Log to stderr (journald) or to a rotating file, at the configured level, off the loop.

    Every record (an access line per request, each worker stderr line) is only queued by the
    thread that logs it; a listener thread formats and writes them in batches, so a slow disk
    or a full pipe never stalls the event loop. Stop the returned listener to flush it at exit.
    """
    target: logging.Handler
    if config.log_file is not None:
        config.log_file.parent.mkdir(parents=True, exist_ok=True)
        target = BatchedFileHandler(
            config.log_file, maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8")
    else:
        target = BatchedStreamHandler(stderr_stream())
    target.setFormatter(SecondFormatter(LOG_FORMAT))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    queued = LineQueueHandler(records)
    queued.addFilter(RepeatFilter())  # before the record is formatted: templates are compared
    root.handlers[:] = [queued]
    root.setLevel(config.log_level)
    # aiohttp's own access logger duplicates ours (and would log query strings).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # At DEBUG aiosqlite logs every statement with its parameters: password hashes, token ids.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
    listener = BatchingListener(records, target)
    listener.start()
    return listener


def serve(config: Config) -> int:
    """Run the daemon until SIGINT/SIGTERM."""
    from idlakd.web.server import run_daemon

    listener = setup_logging(config)
    # The daemon's log format names no source line, thread or process: not finding them
    # saves a stack walk and three look-ups per record (the logging HOWTO's "Optimization"),
    # and every request writes one (the access line).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    try:
        log.info("idlakd %s starting on %s:%d (database %s)",
                 __version__, config.host, config.port, config.database)
        asyncio.run(run_daemon(config))
    finally:
        listener.stop()  # writes what is still queued
    return 0


def _setting(name: str) -> Setting:
    """The settings-table row of one key."""
    return next(s for s in SETTINGS if s.name == name)


def _flag_help(name: str) -> str:
    """A flag's help: the setting's own text and its default."""
    setting = _setting(name)
    return f"{setting.help} (setting {name}; default: {setting.default or '(empty)'})"


def settings_epilog() -> str:
    """Every setting with its default and meaning, for `serve --help`."""
    lines = ["settings (--set KEY=VALUE, the INI file's [idlakd] section, or IDLAKD_KEY):"]
    for setting in SETTINGS:
        lines.append(f"  {setting.name} = {setting.default}".rstrip())
        lines.extend(textwrap.wrap(setting.help, width=76, initial_indent="      ",
                                   subsequent_indent="      "))
    return "\n".join(lines)


def add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                     parents: list[argparse.ArgumentParser]) -> None:
    """`idlakd serve [--host H] [--port P] [--set KEY=VALUE]`."""
    p_serve = sub.add_parser(
        "serve", parents=parents, help="run the daemon (the default)",
        description="Run the daemon until SIGINT/SIGTERM. Settings: the defaults below,\n"
                    "overridden by the --config file, then IDLAKD_* variables, then --set.",
        epilog=settings_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p_serve.add_argument("--host", help=_flag_help("host"))
    p_serve.add_argument("--port", help=_flag_help("port"))

"""The logging thread: queued records written in batches, one wake-up and one write per batch.

Per record (an access line per request), a listener that wakes, formats and writes at once
competes with the event loop for the GIL thousands of times a second: each wake-up takes the GIL
as soon as the loop's thread releases it for a socket call, and the loop then waits. Waiting a
couple of milliseconds after the first record lets a burst gather; it is then formatted and
written with one flush.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import queue
import sys
import time
from typing import Final, TextIO

#: How long the thread lets records gather after the first one of a batch.
LINGER_SECONDS: Final = 0.003
#: Records written at most per batch (bounds how long the thread holds the GIL at a time).
MAX_BATCH: Final = 64


class LineQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler that merges the message into the record instead of formatting a copy.

    The stdlib's prepare() formats the record and copies it, so that other handlers of the
    record see it unchanged: with the message merged (msg = the final text, no args) every
    handler still reads the same text, for ~40 % less work per access line on the loop.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The record, its message merged; the stdlib's copy when it carries a traceback."""
        if record.exc_info or record.exc_text or record.stack_info:
            return super().prepare(record)
        record.msg = record.getMessage()
        record.args = None
        return record


class SecondFormatter(logging.Formatter):
    """A Formatter that renders the date and time once per second (an access line each)."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """'YYYY-MM-DD HH:MM:SS,mmm' in local time, as logging.Formatter writes it."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return self.default_msec_format % (self._stamp, record.msecs)


class BatchFlush(logging.Handler):
    """A handler base: flush() waits for the end of the batch while `holding` is set."""

    holding = False

    def flush(self) -> None:
        """Flush now, unless a batch is being written (the listener flushes after it)."""
        if not self.holding:
            super().flush()


class BatchedStreamHandler(BatchFlush, logging.StreamHandler[TextIO]):
    """A stream handler whose flushes the batching listener defers."""


class BatchedFileHandler(BatchFlush, logging.handlers.RotatingFileHandler):
    """A rotating file handler whose flushes the batching listener defers."""


def stderr_stream() -> TextIO:
    """stderr with a block buffer of its own (sys.stderr writes every line); sys.stderr itself
    when it is no file (replaced by a caller)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return sys.stderr
    raw = open(fd, "wb", buffering=0, closefd=False)
    return io.TextIOWrapper(io.BufferedWriter(raw, 64 * 1024), encoding="utf-8",
                            errors="backslashreplace")


class BatchingListener(logging.handlers.QueueListener):
    """A QueueListener that writes what gathered in LINGER_SECONDS in one go."""

    def _monitor(self) -> None:
        """Wait for a record, let others gather, write them all, flush once; until stopped."""
        while True:
            batch = [self.dequeue(True)]
            if batch[0] is not self._sentinel:
                time.sleep(LINGER_SECONDS)
                while len(batch) < MAX_BATCH and batch[-1] is not self._sentinel:
                    try:
                        batch.append(self.dequeue(False))
                    except queue.Empty:
                        break
            for handler in self.handlers:
                if isinstance(handler, BatchFlush):
                    handler.holding = True
            try:
                for record in batch:
                    if record is not self._sentinel:
                        self.handle(record)
            finally:
                for handler in self.handlers:
                    if isinstance(handler, BatchFlush):
                        handler.holding = False
                    handler.flush()
            if batch[-1] is self._sentinel:
                return

"""The process's logging: one look for every line it prints, and the request id on each.

`configure_logging(level, fmt)` is called once by the command line, before anything logs:

- `text` (the default) keeps the familiar look: `<time> <LEVEL> <logger> <message>` for our
  lines and third-party libraries, uvicorn's own `INFO:     ...` for uvicorn's;
- `json` prints one JSON object per line, on stderr, for everything: our loggers, uvicorn's
  (`uvicorn.error`, `uvicorn.access`: they have no handlers of their own and reach the root
  logger), warnings (`py.warnings`) and uncaught exceptions (logger `app`, level CRITICAL).
  Fields: `ts` (RFC 3339, UTC, milliseconds), `level`, `logger`, `msg`, `request_id` when
  known, `exc` (the traceback, one string) when there is one, then any `extra` fields.
  uvicorn's access lines also get `client`, `method`, `path` and `status`.

Either way a line logged while a request is being answered carries that request's id (text
appends ` request_id=<id>`). `app.api.requestid.RequestIdMiddleware` sets it in the context
variable `REQUEST_ID`; `RequestIdFilter`, on every handler installed here, copies it onto each
record. asyncio tasks copy the context they were created in, so a refresh that a request
started logs that request's id, also for the other requests that join it.

Uvicorn must not configure logging itself: `uvicorn.run(..., log_config=None)`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
import time
from types import TracebackType
from typing import Any, Literal

LogFormat = Literal["text", "json"]

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
"""The id of the request being answered in this context; None outside requests."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
UVICORN_FORMAT = "%(levelprefix)s %(message)s"
UVICORN_ACCESS_FORMAT = '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'

# Loggers that are too chatty at INFO: httpx logs every request URL (our client logs what
# matters), alembic's plugin loader one line per plugin.
QUIET_LOGGERS = ("httpx", "alembic.runtime.plugins")
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")

# Attributes every LogRecord has; anything else on a record came in through `extra`.
# `color_message` is uvicorn's coloured copy of the message.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "color_message",
    "taskName",
}

# Marks the handlers installed here, so that configuring again replaces them and nothing else.
_OURS = "_jobs_gateway_handler"


class RequestIdFilter(logging.Filter):
    """Puts the current request id (or None) on every record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def utc_timestamp(created: float) -> str:
    """RFC 3339 in UTC with milliseconds: `2026-11-29T08:00:00.123Z`."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            client, method, path, _, status = args
            entry.update(client=client, method=method, path=path, status=status)
        fields = len(entry)
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        try:
            return json.dumps(entry, default=str)
        except (TypeError, ValueError):  # an extra json cannot take, e.g. a dict with tuple keys
            items = list(entry.items())
            safe = dict(items[:fields]) | {k: repr(v) for k, v in items[fields:]}
            return json.dumps(safe, default=str)


def with_request_id(line: str, record: logging.LogRecord) -> str:
    request_id = getattr(record, "request_id", None)
    return line if request_id is None else f"{line} request_id={request_id}"


class TextFormatter(logging.Formatter):
    """Today's text lines, with ` request_id=<id>` after the message when there is one."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return with_request_id(super().formatMessage(record), record)


def configure_logging(level: str, fmt: LogFormat = "text") -> None:
    """Route every log line of the process through one handler per stream, in `fmt`.

    `level` is a logging level name (an unknown one means INFO). Calling it again replaces
    what an earlier call installed, and leaves other handlers (a test runner's) alone.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    root = logging.getLogger()
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = TextFormatter(TEXT_FORMAT)
    _install(root, _handler(sys.stderr, formatter))
    root.setLevel(numeric)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _configure_uvicorn(fmt, numeric)
    # Python's warnings and uncaught exceptions print to stderr by themselves; in JSON they
    # become records too, so that no line of the process is anything but JSON.
    logging.captureWarnings(fmt == "json")
    if fmt == "json":
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
    else:
        sys.excepthook = sys.__excepthook__
        threading.excepthook = threading.__excepthook__


def _configure_uvicorn(fmt: LogFormat, level: int) -> None:
    """uvicorn's loggers: in JSON through the root logger, in text with uvicorn's own look
    (its `uvicorn.run` sets their levels again from its `log_level`)."""
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        _install(logger, None)
        logger.propagate = True
    logging.getLogger("uvicorn").setLevel(level)
    logging.getLogger("uvicorn.error").setLevel(logging.NOTSET)  # follows "uvicorn"
    logging.getLogger("uvicorn.access").setLevel(level)
    if fmt == "json":
        return
    from uvicorn.logging import AccessFormatter, DefaultFormatter

    class UvicornText(DefaultFormatter):
        def formatMessage(self, record: logging.LogRecord) -> str:
            return with_request_id(super().formatMessage(record), record)

    class UvicornAccessText(AccessFormatter):
        def formatMessage(self, record: logging.LogRecord) -> str:
            return with_request_id(super().formatMessage(record), record)

    # As uvicorn's default configuration has them: its lines on stderr, access on stdout.
    main = logging.getLogger("uvicorn")
    _install(main, _handler(sys.stderr, UvicornText(UVICORN_FORMAT)))
    main.propagate = False
    access = logging.getLogger("uvicorn.access")
    _install(access, _handler(sys.stdout, UvicornAccessText(UVICORN_ACCESS_FORMAT)))
    access.propagate = False


def _handler(stream: Any, formatter: logging.Formatter) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    setattr(handler, _OURS, True)
    return handler


def _install(logger: logging.Logger, handler: logging.Handler | None) -> None:
    """Replace the handlers installed here before (if any) on `logger` with `handler`."""
    for old in [h for h in logger.handlers if getattr(h, _OURS, False)]:
        logger.removeHandler(old)
        old.close()
    if handler is not None:
        logger.addHandler(handler)


def _log_uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    logging.getLogger("app").critical("uncaught exception", exc_info=(kind, value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    logging.getLogger("app").critical(
        "uncaught exception in thread %s",
        args.thread.name if args.thread is not None else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )

"""Logging for the controller: structlog with syslog priorities (SPEC 12).

Events are key-value; the message is the event text, extra keys follow as
key=value. Output goes to stderr as "IDENT[PID]: message" in the foreground
and to syslog with -s or when daemonized; JSON lines on request.
"""

from __future__ import annotations

import functools
import os
import sys
import syslog
from typing import Any

import structlog
from smcroute.unprivileged.levels import PRIORITY, parse_level

__all__ = ["PRIORITY", "Logger", "batched", "configure", "parse_level"]

class Logger(structlog.BoundLoggerBase):
    """A bound logger with one method per syslog priority.

    (Each method calls structlog directly: an audited batch of 2000
    smcroutectl edits logs 2000 events, and every layer shows.)
    """

    def emerg(self, event: str, **kw: Any) -> Any:
        return self._proxy_to_logger("emerg", event, **kw)

    def crit(self, event: str, **kw: Any) -> Any:
        return self._proxy_to_logger("crit", event, **kw)

    def err(self, event: str, **kw: Any) -> Any:
        return self._proxy_to_logger("err", event, **kw)

    def warning(self, event: str, **kw: Any) -> Any:
        return self._proxy_to_logger("warning", event, **kw)

    def notice(self, event: str, **kw: Any) -> Any:
        return self._proxy_to_logger("notice", event, **kw)

    def info(self, event: str, **kw: Any) -> Any:
        return self._proxy_to_logger("info", event, **kw)

    def debug(self, event: str, **kw: Any) -> Any:
        return self._proxy_to_logger("debug", event, **kw)


class _Sink:
    """The end of the chain: writes a rendered line to stderr and/or syslog.

    One ready-made method per priority name (structlog calls the logger's
    method named like the level).
    """

    def __init__(self, ident: str, stderr: bool, use_syslog: bool, json: bool = False) -> None:
        self.ident = ident
        self.json = json
        self.stderr = stderr
        self.syslog = use_syslog
        if use_syslog:
            syslog.openlog(ident, syslog.LOG_PID | syslog.LOG_NDELAY, syslog.LOG_DAEMON)
        for method, prio in PRIORITY.items():
            setattr(self, method, functools.partial(self._emit, prio))

    held: list[str] | None = None  # stderr lines kept back by batched()

    def _emit(self, prio: int, line: str) -> None:
        if self.stderr:
            text = f"{line}\n" if self.json else f"{self.ident}[{os.getpid()}]: {line}\n"
            if _Sink.held is not None:
                _Sink.held.append(text)
            else:
                _write(text)
        if self.syslog:
            syslog.syslog(prio, line)


def _write(text: str) -> None:
    try:
        sys.stderr.write(text)  # line-buffered: written now
    except (OSError, ValueError):
        pass


class batched:
    """Write the stderr lines of the events logged in the block together:
    one write for a batch of 2000 audited edits, not 2000 (syslog still
    gets one message per event). A class, not a generator: the controller
    enters it for every batch of effects."""

    def __enter__(self) -> None:
        self.outer = _Sink.held is None  # (nested: the outer one writes)
        if self.outer:
            _Sink.held = []

    def __exit__(self, *exc: object) -> None:
        if self.outer:
            lines, _Sink.held = _Sink.held, None
            if lines:
                _write("".join(lines))


def _render_kv(_: Any, __: str, event: dict[str, Any]) -> str:
    text = str(event.pop("event", ""))
    extra = " ".join([f"{k}={v}" for k, v in event.items()])
    return f"{text} {extra}" if extra else text


def configure(ident: str, level: int, stderr: bool, use_syslog: bool,
              json: bool = False) -> Logger:
    def level_filter(_: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        if PRIORITY[method] > level:
            raise structlog.DropEvent
        return event

    renderer: Any = structlog.processors.JSONRenderer() if json else _render_kv
    processors: list[Any] = [level_filter]
    if json:
        processors.append(structlog.processors.add_log_level)
        processors.append(structlog.processors.TimeStamper(fmt="iso"))
        processors.append(lambda _, __, event: {**event, "ident": ident, "pid": os.getpid()})
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=Logger,
        logger_factory=lambda *_: _Sink(ident, stderr, use_syslog, json),
        cache_logger_on_first_use=True,
    )
    # a bound logger, not get_logger()'s lazy proxy, which binds anew on
    # every call (a quarter of an audit event's cost)
    return structlog.get_logger().bind()

"""Access logs: the compiled formats (format.py, text.py), filters (filters.py) and buffered
writers (writer.py) of the loggers an HCM, a tcp_proxy or a listener configures
(config/access_log.py parses and checks them). `AccessLog.log(record)` is called once per
finished request or connection; with no logger configured the codecs hold None and pay one
check.
"""

from __future__ import annotations

from collections.abc import Sequence

from xds_proxy.access_log.filters import Predicate, compile_filter
from xds_proxy.access_log.format import compile_format
from xds_proxy.access_log.record import LogRecord
from xds_proxy.access_log.text import Log, compile_text_logger
from xds_proxy.access_log.writer import FILES, LogFile
from xds_proxy.config.access_log import AccessLogSpec, TextFormat
from xds_proxy.errors import ConfigError


class AccessLog:
    """Every logger of one HCM (or tcp_proxy, or listener): filter, format, sink."""

    def __init__(self, specs: Sequence[AccessLogSpec], path: str = "access_log") -> None:
        self.specs = tuple(specs)
        loggers: list[tuple[Predicate | None, Log]] = []
        for index, spec in enumerate(specs):
            try:
                sink = FILES.get(spec.path)
            except OSError as error:
                raise ConfigError(
                    f"{path}[{index}]: cannot open access log '{spec.path}': {error.strerror}"
                ) from None
            log_filter = compile_filter(spec.filter) if spec.filter is not None else None
            loggers.append((log_filter, _logger(spec, sink)))
        self._loggers = tuple(loggers)
        if len(loggers) == 1 and loggers[0][0] is None:
            # One logger without a filter (the common case): its function is `log`.
            self.log = loggers[0][1]  # type: ignore[method-assign]

    def log(self, record: LogRecord) -> None:
        for log_filter, log in self._loggers:
            if log_filter is None or log_filter(record):
                log(record)


def _logger(spec: AccessLogSpec, sink: LogFile) -> Log:
    """One logger's format writing to its sink: a text format's generated function appends
    its line itself."""
    if isinstance(spec.format, TextFormat):
        return compile_text_logger(spec.format.template, spec.omit_empty_values, sink)
    line = compile_format(spec.format, spec.omit_empty_values)
    write = sink.write
    return lambda record: write(line(record))


def build_access_log(specs: Sequence[AccessLogSpec], path: str) -> AccessLog | None:
    """The runtime loggers of a config's `access_log` list (at `path`, for errors); None when
    it is empty. Opens the files: ConfigError when one cannot be opened (as Envoy)."""
    return AccessLog(specs, path) if specs else None

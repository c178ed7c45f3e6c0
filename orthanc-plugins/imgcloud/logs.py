"""Route the plugin code's `logging` records to Orthanc's log (callables given by the glue)."""

from __future__ import annotations

import logging
from collections.abc import Callable


class OrthancLogHandler(logging.Handler):
    def __init__(
        self,
        info: Callable[[str], None],
        warning: Callable[[str], None],
        error: Callable[[str], None],
    ) -> None:
        super().__init__()
        self._info, self._warning, self._error = info, warning, error

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = f"imaging-cloud {record.name}: {self.format(record)}"
            if record.levelno >= logging.ERROR:
                self._error(message)
            elif record.levelno >= logging.WARNING:
                self._warning(message)
            else:
                self._info(message)
        except Exception:
            self.handleError(record)


def install(
    info: Callable[[str], None], warning: Callable[[str], None], error: Callable[[str], None]
) -> None:
    root = logging.getLogger("imgcloud")
    root.handlers[:] = [OrthancLogHandler(info, warning, error)]
    root.setLevel(logging.INFO)
    root.propagate = False

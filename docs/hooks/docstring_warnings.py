"""mkdocs hook: griffe's docstring warnings about modules another work stream is rewriting do not fail
``mkdocs build --strict`` (they are shown as INFO, naming the file); every other warning still does.

List a module in :data:`LENIENT` only while it is being refactored elsewhere; remove it afterwards.
"""

from __future__ import annotations

import logging

# modules under refactoring on another branch when the API reference was added (issue 9)
LENIENT: tuple[str, ...] = ()


class _Lenient(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and any(p in record.getMessage() for p in LENIENT):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_FILTER = _Lenient()


def on_startup(command, dirty) -> None:
    logger = logging.getLogger("mkdocs.plugins.griffe")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)

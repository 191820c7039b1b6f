"""The one atomic writer: a temporary file in the target's folder, flushed to disk, then renamed over it.

``os.replace`` is atomic on POSIX and Windows, so a reader (or a resumed run) sees either the old
complete file or the new complete one, never a partial write; the temporary file is removed on error.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, writer: Callable[[BinaryIO], object], suffix: str = ".tmp") -> Path:
    """Call ``writer(file)`` on a temporary binary file next to ``path``, then rename it to ``path``.

    ``suffix`` ends the temporary name (e.g. ``".tmp.nii.gz"`` for writers that look at the extension).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(payload))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(value):
    """``value`` with tensors, arrays and numpy scalars as plain lists/numbers, NaN as ``None`` and
    infinities as ``"inf"``/``"-inf"`` (so that ``json.dumps`` writes strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist) and not isinstance(value, (int, float)):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def atomic_write_json(path: str | os.PathLike, value) -> Path:
    """Write ``value`` as indented JSON (through :func:`json_safe`) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(json_safe(value), indent=2, sort_keys=False))


__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "json_safe"]

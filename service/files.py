"""Files workers write: names made from outside ids, and writes that appear whole or not at all."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def safe_name(text: str) -> str:
    """An outside id (job id, delivery id) as a file or task name: vendor ids are digits, but
    nothing is assumed."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:100] or "_"


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """Write to `<path>.partial`, renamed into place only when the block completes."""
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as handle:
            yield handle
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)

"""A progress bar on stderr (tqdm) where tqdm is installed and wanted; the bare iterable otherwise."""

from __future__ import annotations

import sys


def progress(iterable, desc: str, *, total: int | None = None, enabled: bool = True, leave: bool = True):
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=leave, dynamic_ncols=True)
        except ImportError:
            pass
    return iterable

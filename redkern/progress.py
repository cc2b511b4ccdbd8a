"""Progress bars on standard error, drawn the same way by every long-running command."""

from __future__ import annotations

import os
import sys


def progress_bar(*, total: int, desc: str, unit: str = "it", disable: bool = False,
                 terminal_only: bool = True, **options):
    """A tqdm bar on stderr; off when ``disable``, or when stderr is not a terminal and
    ``terminal_only`` (a log file gets none, unless asked for).

    A pseudo-terminal without a window size (``script`` fed from a pipe, some CI runners)
    reports 0 x 0, and tqdm draws nothing on a screen of 0 lines: 80 x 24 is assumed there.
    """
    from tqdm import tqdm

    tty = sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    try:
        size = os.get_terminal_size(sys.stderr.fileno()) if tty else None
    except (OSError, ValueError, AttributeError):
        size = None
    sized = size is not None and size.columns > 0 and size.lines > 0
    return tqdm(total=total, desc=desc, unit=unit, disable=disable or (terminal_only and not tty), file=sys.stderr,
                dynamic_ncols=sized, ncols=None if sized else 80, nrows=None if sized else 24, **options)

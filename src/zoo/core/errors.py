"""One-line user errors.

Every problem a user can fix (bad path, bad column, bad config key) is raised as `ZooError`; the entry
points print it as a single line and exit with status 2 instead of showing a traceback. A maintainer gets
the traceback (and the original exception behind a one-line message) with ``ZOO_DEBUG=1`` or
``HYDRA_FULL_ERROR=1``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any


class ZooError(Exception):
    """An error the user can fix; its message names the file, column or config key involved."""

    def __init__(self, message: str):
        # Keep it to one line whatever the caller passed, so the CLI contract holds.
        super().__init__(" ".join(str(message).split()))


def debugging() -> bool:
    """``ZOO_DEBUG=1`` (or Hydra's own ``HYDRA_FULL_ERROR=1``): show tracebacks instead of one-liners."""
    return any(os.environ.get(k, "") not in ("", "0") for k in ("ZOO_DEBUG", "HYDRA_FULL_ERROR"))


def exit_on_user_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run `fn`; turn a `ZooError` into `zoo: error: ...` on stderr and exit status 2 (re-raised with its
    traceback under `debugging()`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ZooError as err:
            if debugging():
                raise
            print(f"zoo: error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper

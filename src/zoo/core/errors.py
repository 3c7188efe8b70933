"""One-line user errors.

Every problem a user can fix (bad path, bad column, bad config key) is raised as `ZooError`; the entry
points print it as a single line and exit with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any


class ZooError(Exception):
    """An error the user can fix; its message names the file, column or config key involved."""

    def __init__(self, message: str):
        # Keep it to one line whatever the caller passed, so the CLI contract holds.
        super().__init__(" ".join(str(message).split()))


def exit_on_user_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run `fn`; turn a `ZooError` into `zoo: error: ...` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ZooError as err:
            print(f"zoo: error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper

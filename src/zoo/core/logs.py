"""Console output of the entry points: each log line once, no third-party advertisements, no warnings
that repeat per batch or per window and tell the user nothing they can act on.

Hydra configures the root logger (console + the run's log file). Lightning, imported before that, gave
its own loggers a console handler of their own and stopped propagation, so every Lightning line was
printed twice (once by each); `configure()` hands them back to Hydra's handlers.
"""

from __future__ import annotations

import logging
import warnings

# Messages dropped from the console and the log file (substring match on the formatted message).
DROPPED_LOG_MESSAGES = ("litlogger",)  # Lightning's "Tip: ... try installing litlogger" advertisement

# (message regex, category): warnings without information for a zoo user.
IGNORED_WARNINGS = (
    # Lightning's own use of a torch pytree API deprecated in torch 2.13: nothing a user can change.
    (r".*isinstance\(treespec, LeafSpec\)", Warning),
    # A run whose step limit comes before its first validation: zoo.train validates once at the end.
    (r".*could not find the monitored key in the returned metrics", Warning),
    # sklearn, called by pytorch-forecasting's stock loader once per window with a bare array.
    (r".*X does not have valid feature names", UserWarning),
)


class _DropMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in DROPPED_LOG_MESSAGES)


def ignore_noise() -> None:
    for pattern, category in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)


def quiet_script() -> None:
    """For scripts that train outside Hydra (the benchmarks): the same warnings ignored and the same
    advertisement dropped as in the entry points; Lightning keeps its own console handler."""
    ignore_noise()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropMessages) for f in logger.filters):
        logger.addFilter(_DropMessages())


def configure() -> None:
    """Call once logging is set up (inside the Hydra task): route Lightning through the root handlers."""
    quiet_script()
    import lightning.pytorch  # noqa: F401  (its import adds the console handlers removed below)

    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "pytorch_lightning",
        "lightning_fabric",
    ):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # Lightning's own console handler
                logger.removeHandler(handler)
        logger.propagate = True
    drop = _DropMessages()
    for handler in logging.getLogger().handlers:
        handler.addFilter(drop)

"""Small helpers shared by the command-line entry points (train, evaluate, import, export)."""

from __future__ import annotations

import logging

from mtpsl_tf.errors import NonFiniteLossError

# The exceptions our entry points turn into `error: ...` and exit status 2 (bad input).
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError)
# Failures of a run that are no bug of ours (a diverging training): `error: ...`, exit status 1.
RUN_ERRORS = (NonFiniteLossError,)


def error_message(err: BaseException) -> str:
    """The text to show for a user error (a KeyError's str() would add quotes)."""
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err)


def quiet_library_logs() -> None:
    """TFDS and the SavedModel writer log every step at INFO, and TFDS warns about a
    deprecation inside its own code on every dataset it opens."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("absl").addFilter(lambda record: "FeatureConnector.dtype" not in record.getMessage())


def metric_text(value) -> str:
    """A metric for a summary line: 4 decimals, or "undefined" for None (a NaN metric in
    metrics.json / history.json)."""
    return "undefined" if value is None else f"{value:.4f}"

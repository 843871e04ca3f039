"""User-facing errors.

Anything a user can cause (a bad override, missing data, a corrupt file, a checkpoint that does not fit
the model) raises a subclass of :class:`CnnlabError` whose message is one clear sentence saying what
was wrong and what to do. The CLI prints that sentence and exits non-zero instead of a traceback.
"""


class CnnlabError(Exception):
    """An error caused by the user's input, reported without a traceback."""

    exit_code = 2


class ConfigError(CnnlabError):
    """A configuration value is invalid."""


class DataError(CnnlabError):
    """Data is missing, unreadable or malformed."""


class CheckpointError(CnnlabError):
    """A checkpoint is missing, unsafe or does not match the model."""

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


def did_you_mean(word: str, choices) -> str:
    """`` Did you mean 'x'?`` for the choice nearest to a misspelt ``word``, or "" when none is near.

    Besides spelling (difflib), an abbreviation counts: ``learning_rate`` for ``lr`` and ``wd`` for
    ``weight_decay`` (the initials of the words joined by ``_``).
    """
    import difflib

    choices = [str(c) for c in choices]
    hint = difflib.get_close_matches(str(word), choices, n=1)
    if not hint:
        hint = [c for c in choices if _initials(c) == str(word) or _initials(str(word)) == c]
    return f" Did you mean '{hint[0]}'?" if hint else ""


def _initials(name: str) -> str:
    words = [w for w in name.split("_") if w]
    return "".join(w[0] for w in words) if len(words) > 1 else ""

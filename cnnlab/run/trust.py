"""Where trust comes from: the current command line, never a file.

Nothing read from disk can name code (:mod:`cnnlab.run.stored`), trusted or not. ``trust_config=true``
only relaxes one check of that loader: a stored ``model._target_``/``optimizer._target_`` that cnnlab's
registries do not know is ignored, and the node is built by its ``name``, instead of refused.
"""

from __future__ import annotations

TRUE = ("true", "1", "yes", "on")


def trusted(args: list[str]) -> bool:
    """``trust_config=true`` typed in this command's own arguments (the last one given wins)."""
    value = None
    for arg in args:
        key, sep, text = arg.lstrip("+").partition("=")
        if sep and key == "trust_config":
            value = text.strip("'\"").lower() in TRUE
    return bool(value)

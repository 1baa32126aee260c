"""The errors that are the user's to fix (a config key, a data file): torch-free, so that reporting them costs nothing.

``python -m nfpi <stage>`` (:mod:`nfpi.stages`) turns either into one line naming the key or file, without a
traceback; :mod:`nfpi.config` and :mod:`nfpi.data` re-export them where their users look.

    >>> issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    True
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError"]


class ConfigError(ValueError):
    """A config key is unknown, misspelt or has a value of the wrong type."""


class DataError(ValueError):
    """A dataset file or folder is missing or malformed, or a data config value cannot be honoured."""

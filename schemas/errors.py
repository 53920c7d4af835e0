"""One base for the errors a user can fix (bad config, missing input, a busy workspace).

The CLI prints a SynprefError as one line and exits 1; any other exception is a bug and keeps
its traceback. Every layer raises these, so this module imports nothing.
"""

from __future__ import annotations


class SynprefError(Exception):
    """An error the user can fix: its message says what is wrong and what to do."""


class ConfigError(SynprefError, ValueError):
    """A configuration or command-line value that cannot work (a ValueError for older callers)."""


class InputError(SynprefError, ValueError):
    """Input that cannot be used as given: a file, table or workspace lacks what a command needs."""

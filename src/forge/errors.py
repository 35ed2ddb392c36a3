"""User-facing errors.

A `ForgeError` is a user mistake (a bad flag, a missing file, a malformed line). Its message names the
problem, where it is (file and line, or the flag) and a way out. The CLI prints it without a traceback
and exits with status 2. Programming errors stay ordinary exceptions.
"""


class ForgeError(Exception):
    """A mistake the user can fix; the message says what, where, and how."""


class ConfigError(ForgeError):
    """A bad option, flag or config file value."""


class DataError(ForgeError):
    """Input data that cannot be used: a missing path, an empty corpus, a malformed artifact."""


class CheckpointError(ForgeError):
    """A run directory or checkpoint that cannot be loaded or resumed."""

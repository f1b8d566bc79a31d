"""The exceptions expkit raises and the interrupts users raise."""

from __future__ import annotations


class ExpkitError(Exception):
    """Base of expkit's errors: the message is meant to be shown to the user as is."""


class UsageError(ExpkitError):
    """The user asked for something malformed (a flag, an override, a URL)."""


class ConfigError(ExpkitError):
    """The configuration cannot be built as asked."""


class ConfigAddedError(ConfigError):
    """An update added an entry that no captured function uses."""


class MissingConfigError(ConfigError):
    """A captured function has a parameter nothing can fill."""


class SignatureError(ExpkitError):
    """A captured function was called with arguments that do not fit it."""


class NamedConfigNotFoundError(ConfigError):
    """``with NAME`` names neither a named config nor a config file."""


class CommandNotFoundError(UsageError):
    """The command line names a command the experiment does not have."""


class ExpkitInterrupt(Exception):
    """Raise (a subclass of) this to stop a run; its ``STATUS`` becomes the run's status."""

    STATUS = "INTERRUPTED"


class TimeoutInterrupt(ExpkitInterrupt):
    """Stops a run with status ``TIMEOUT``."""

    STATUS = "TIMEOUT"


# Sacred's names, so that migrated code keeps working.
SacredError = ExpkitError
SacredInterrupt = ExpkitInterrupt

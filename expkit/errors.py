"""The exceptions expkit raises and the interrupts users raise.

They have Sacred's names, bases and constructor arguments (``ConfigAddedError``,
``NamedConfigNotFoundError``, ...), so code that raises or catches Sacred's errors keeps
working; their messages stay on one line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_TRACEBACK_FILTERS = ("always", "default", "never")


def _restore(cls: type, args: tuple, state: dict) -> BaseException:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class ExpkitError(Exception):
    """Base of expkit's errors: the message is meant to be shown to the user as is.

    ``print_traceback``, ``filter_traceback`` and ``print_usage`` are Sacred's hints for
    the command line; they are kept as attributes.
    """

    def __init__(
        self,
        message: str = "",
        print_traceback: bool = True,
        filter_traceback: str = "default",
        print_usage: bool = False,
    ) -> None:
        super().__init__(message)
        if filter_traceback not in _TRACEBACK_FILTERS:
            raise ValueError(
                f"filter_traceback must be one of {', '.join(_TRACEBACK_FILTERS)}, "
                f"not {filter_traceback!r}"
            )
        self.print_traceback = print_traceback
        self.filter_traceback = filter_traceback
        self.print_usage = print_usage

    def __reduce__(self) -> tuple:
        # Subclasses take other constructor arguments than the message: rebuild from state,
        # so that an error still pickles (sweep workers send them to the session).
        return _restore, (type(self), self.args, dict(self.__dict__))


class UsageError(ExpkitError):
    """The user asked for something malformed (a flag, an override, a URL)."""


class ConfigError(ExpkitError):
    """The configuration cannot be built as asked; ``conflicting_configs`` names the entries."""

    def __init__(
        self,
        message: str,
        conflicting_configs: str | Iterable[str] = (),
        print_conflicting_configs: bool = True,
        print_traceback: bool = True,
        filter_traceback: str = "default",
        print_usage: bool = False,
        config: Mapping | None = None,
    ) -> None:
        super().__init__(message, print_traceback, filter_traceback, print_usage)
        if isinstance(conflicting_configs, str):
            conflicting_configs = (conflicting_configs,)
        self.conflicting_configs = tuple(conflicting_configs)
        self.print_conflicting_configs = print_conflicting_configs
        self.config = dict(config or {})

    def _values(self) -> str:
        return ", ".join(
            f"{path!r} = {_value_at(self.config, path)!r}" for path in self.conflicting_configs
        )

    def __str__(self) -> str:
        message = super().__str__()
        if self.print_conflicting_configs and self.conflicting_configs:
            message += f" (conflicting configuration values: {self._values()})"
        return message


def _value_at(config: Mapping, path: str) -> Any:
    current: Any = config
    for key in path.split("."):
        if not isinstance(current, Mapping) or key not in current:
            return None
        current = current[key]
    return current


class InvalidConfigError(ConfigError):
    """Raise this in your code when the configuration's values do not fit together."""


class InvalidConfigKeyError(ConfigError, KeyError):
    """A config key the stores cannot keep; a ``KeyError`` too, as Sacred raised one."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # not KeyError's quoted repr


class ConfigAddedError(ConfigError):
    """An update added an entry that no captured function uses (most likely a typo)."""

    SPECIAL_ARGS = frozenset({"_log", "_config", "_seed", "__doc__", "config_filename", "_run"})

    def __init__(
        self,
        conflicting_configs: str | Iterable[str],
        message: str = "Added new config entry that is not used anywhere",
        captured_args: Iterable[str] = (),
        print_conflicting_configs: bool = True,
        print_traceback: bool = False,
        filter_traceback: str = "default",
        print_usage: bool = False,
        print_suggestions: bool = True,
        config: Mapping | None = None,
    ) -> None:
        super().__init__(
            message,
            conflicting_configs,
            print_conflicting_configs,
            print_traceback,
            filter_traceback,
            print_usage,
            config,
        )
        self.captured_args = tuple(captured_args)
        self.print_suggestions = print_suggestions

    def __str__(self) -> str:
        from expkit.utils import suggest  # only when the error is shown

        message = Exception.__str__(self)
        if self.print_conflicting_configs and self.conflicting_configs:
            message += f": {self._values()}"
            if self.print_suggestions:
                known = [a for a in self.captured_args if a not in self.SPECIAL_ARGS]
                message += suggest(self.conflicting_configs[0], known)
        return message + "; pass -f/--force to add it anyway"


class MissingConfigError(ConfigError):
    """A captured function has a parameter nothing can fill."""

    def __init__(
        self,
        message: str = "Configuration values are missing:",
        missing_configs: Iterable[str] = (),
        print_traceback: bool = False,
        filter_traceback: str = "default",
        print_usage: bool = True,
    ) -> None:
        missing = tuple(missing_configs)
        if missing:
            message = f"{message} {missing}"
        super().__init__(
            message,
            print_traceback=print_traceback,
            filter_traceback=filter_traceback,
            print_usage=print_usage,
        )
        self.missing_configs = missing


class NamedConfigNotFoundError(ConfigError):
    """``with NAME`` names neither a named config nor a config file."""

    def __init__(
        self,
        named_config: str,
        message: str = "Named config not found:",
        available_named_configs: Iterable[str] = (),
        print_traceback: bool = False,
        filter_traceback: str = "default",
        print_usage: bool = False,
    ) -> None:
        from expkit.utils import suggest  # only when a name is wrong

        available = tuple(available_named_configs)
        text = (
            f'{message} "{named_config}". Available config values are: {available}'
            f"{suggest(named_config, available)}; nor is there a config file {named_config!r}"
        )
        super().__init__(
            text,
            print_traceback=print_traceback,
            filter_traceback=filter_traceback,
            print_usage=print_usage,
        )
        self.named_config = named_config
        self.available_named_configs = available


class CircularDependencyError(ExpkitError):
    """The ingredients of an experiment include one another in a circle."""

    def __init__(
        self,
        message: str = "Circular dependency detected:",
        ingredients: Iterable[Any] = (),
        print_traceback: bool = True,
        filter_traceback: str = "default",
        print_usage: bool = False,
    ) -> None:
        super().__init__(message, print_traceback, filter_traceback, print_usage)
        self.ingredients = list(ingredients)

    def __str__(self) -> str:
        chain = "->".join(getattr(i, "path", str(i)) for i in self.ingredients)
        return f"{super().__str__()} {chain}" if chain else super().__str__()


class SignatureError(ExpkitError, TypeError):
    """A captured function was called with arguments that do not fit it."""


class ObserverError(ExpkitError):
    """An observer cannot be set up as asked."""


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

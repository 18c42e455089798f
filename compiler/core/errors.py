"""Typed errors. Each carries the exit code the CLI uses and a one-line message for users.

User mistakes (:class:`ConfigError`, :class:`TargetError`, :class:`DataError`,
:class:`ModelError`) exit with 2 and no traceback; a pass that fails on valid input
(:class:`PassError`) exits with 1 and names the failed pass and the passes before it.
"""

from __future__ import annotations


class SecompileError(Exception):
    """Base of every error secompile raises on purpose."""

    exit_code = 1


class UserError(SecompileError):
    """An error the user can fix: bad option, bad file, unsupported target."""

    exit_code = 2


class ConfigError(UserError):
    """A pipeline, pass option or CLI option is invalid."""


class TargetError(UserError):
    """A target is unknown or cannot be built or run on this machine."""


class DataError(UserError):
    """Audio input is unreadable, empty, stereo, non-finite or at the wrong rate."""


class ModelError(UserError):
    """A model or checkpoint cannot be loaded (missing, corrupt, wrong architecture, unsafe)."""


class OutputError(UserError):
    """The output location cannot be written."""


class PassError(SecompileError):
    """A pass failed; names the pass and the pipeline that ran before it."""

    def __init__(self, pass_name: str, message: str, completed: tuple[str, ...] = ()) -> None:
        self.pass_name = pass_name
        self.completed = completed
        self.reason = message
        before = " -> ".join(completed) if completed else "nothing"
        super().__init__(f"pass '{pass_name}' failed: {message} (passes before it: {before})")

    def __reduce__(self) -> tuple:
        # pickled by its constructor arguments, so it crosses process boundaries (Ray) intact
        return (PassError, (self.pass_name, self.reason, self.completed))

    def with_completed(self, completed: tuple[str, ...]) -> PassError:
        """The same error, naming the passes that ran before the failed one."""
        return PassError(self.pass_name, self.reason, completed)

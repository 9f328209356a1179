"""The one exception type every builder phase raises for a failure it understands.

A :class:`BuilderError` carries what the operator needs to tell a user's mistake
from a flaky network or a node that cannot do the job: the exit code (the Job's
``podFailurePolicy`` keys on it), a CamelCase kind, one sentence naming the
object or field at fault, and the spec field when there is one.
"""

from __future__ import annotations

from tritonresnet_builder.contract import ExitCode, Failure


class BuilderError(Exception):
    def __init__(self, exit_code: ExitCode, kind: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.kind = kind
        self.message = message
        self.field = field

    def failure(self) -> Failure:
        return Failure(kind=self.kind, message=self.message, field=self.field)


def bad_input(kind: str, message: str, field: str = "") -> BuilderError:
    """The user's mistake: retrying cannot help."""
    return BuilderError(ExitCode.BAD_INPUT, kind, message, field)


def transient(kind: str, message: str, field: str = "") -> BuilderError:
    """Network, throttling, a busy volume: the Job retries."""
    return BuilderError(ExitCode.TRANSIENT, kind, message, field)


def usage(kind: str, message: str, field: str = "") -> BuilderError:
    """Arguments no operator should have rendered."""
    return BuilderError(ExitCode.USAGE, kind, message, field)


def unsupported(kind: str, message: str) -> BuilderError:
    """The node cannot do this (no TensorRT, no GPU)."""
    return BuilderError(ExitCode.UNSUPPORTED, kind, message)

"""Errors a user can act on. Each one carries enough context to print a single useful line."""
from __future__ import annotations


class SlimbenchError(Exception):
    """Base class: anything the CLI reports as a one-line error instead of a traceback."""

    exit_code = 1


class RecipeError(SlimbenchError):
    """A recipe (or an override of it) is malformed: names the file, the key path and what is accepted."""

    exit_code = 2

    def __init__(self, source: str, path: str, expected: str, got: object = None, *, has_got: bool = True):
        self.source, self.path, self.expected, self.got = source, path, expected, got
        where = f"{source}: {path}" if path else source
        tail = f", got {_show(got)}" if has_got else ""
        super().__init__(f"{where}: expected {expected}{tail}")


class UsageError(SlimbenchError):
    """Bad command-line input (unknown recipe, backend, malformed --set)."""

    exit_code = 2


class RunFilesError(SlimbenchError):
    """A run directory's files (run.json, result.json) are missing or malformed: names the file and the key."""

    exit_code = 2


class Terminated(BaseException):
    """SIGTERM reached the process: unwinds like KeyboardInterrupt so every layer records 'interrupted'."""


def raise_terminated(signum: int, frame: object) -> None:
    """SIGTERM handler (runner and worker): turn the signal into Terminated."""
    raise Terminated()


class DataError(SlimbenchError):
    """A dataset is missing or corrupt: the message names the path and the expected layout."""


class UnsupportedStage(SlimbenchError):
    """A backend cannot run a stage or feature; names both so the capability table can show it."""

    def __init__(self, backend: str, feature: str, why: str = ""):
        self.backend, self.feature = backend, feature
        super().__init__(f"backend '{backend}' does not support {feature}" + (f": {why}" if why else ""))


class ParityError(SlimbenchError):
    """Converted initial weights do not reproduce the reference logits: the comparison would be unfair."""


class TrainingDiverged(SlimbenchError):
    """A loss became NaN or infinite: the run stops rather than writing meaningless numbers."""


class BackendUnavailable(SlimbenchError):
    """A framework is not installed (or fails to import) in this environment."""


def _show(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)

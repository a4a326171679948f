"""User-facing errors.

Every problem a user can fix (bad name, missing folder, malformed config, unreachable server, bad
features) is raised as :class:`SuiteError` with one paragraph that names the problem and the fix.
The CLI prints it without a traceback and exits with :data:`EXIT_USER_ERROR`; library callers can
catch it like any exception. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class SuiteError(Exception):
    """A problem in the user's input or environment, with the fix in the message."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.strip()
        self.fix = fix.strip() if fix else None
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.problem} {self.fix}" if self.fix else self.problem


def check(condition: bool, problem: str, fix: str | None = None) -> None:
    """Raise :class:`SuiteError` unless ``condition`` holds."""
    if not condition:
        raise SuiteError(problem, fix)

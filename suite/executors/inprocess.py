"""``inprocess``: the driver runs each ready cell itself, one at a time (the default).

Cells still claim (:mod:`suite.claims`), so several drivers on one study share its cells
instead of each running all of them: a cell another driver holds is skipped, and waited for
when everything else needs it. A stage's error ends the study at once, as it always has.
"""

from __future__ import annotations

import time

from suite import cells
from suite.claims import ClaimLost
from suite.config import StudyConfig


class InProcessExecutor:
    slots = 1

    def __init__(self, **_: object) -> None:
        pass

    def in_flight(self) -> dict[str, str]:
        return {}

    def submit(self, cfg: StudyConfig, cell: cells.Cell) -> object | None:
        from suite.study import run_cell

        try:
            return run_cell(cfg, cell)
        except ClaimLost:
            return None

    def collect(self) -> list[tuple[str, int]]:
        return []

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

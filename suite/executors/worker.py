"""A long-lived worker process: runs the worker command of one cell after another.

    python -m suite.executors.worker -- SUITE_ARGS...

reads one request per line on stdin, ``STUDY_FILE<TAB>KEY<TAB>LOG``, runs exactly what
:func:`suite.executors.base.worker_command` would run in a fresh process
(``suite SUITE_ARGS... study work STUDY_FILE --cell KEY``, through :func:`suite.cli.main`, so the
exit codes are the same), with its output appended to ``LOG``, and answers ``KEY<TAB>CODE`` on
stdout. It ends at the end of its input (the driver closed the pipe or died) once the cell in
hand is done, so a killed driver's worker still finishes its cell and ends its claim.

Why: starting Python, importing torch and MLflow and opening the store costs seconds per cell,
which with one cell per grid point would rival the training itself on a small study. A worker
serves at most :data:`MAX_CELLS` cells, then ends and is replaced (memory that a long series of
cells fragments or leaks is given back).
"""

from __future__ import annotations

import os
import sys
import traceback

MAX_CELLS = 200
EXIT_CRASH = 1  # an exception that is not a user error (its traceback is in the cell's log)


def serve(suite_args: list[str], requests=None, answers=None) -> int:
    from suite.cli import main

    requests = requests if requests is not None else sys.stdin
    # The answers keep the original stdout; each cell's output goes to its log.
    answers = answers if answers is not None else os.fdopen(os.dup(1), "w", buffering=1)
    served = 0
    for line in requests:
        if not line.strip():
            continue
        study_file, key, log = line.rstrip("\n").split("\t")
        code = _run_one(main, suite_args, study_file, key, log)
        answers.write(f"{key}\t{code}\n")
        answers.flush()
        served += 1
        if served >= MAX_CELLS:
            break
    return 0


def _run_one(main, suite_args: list[str], study_file: str, key: str, log: str) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        return main([*suite_args, "study", "work", study_file, "--cell", key])
    except SystemExit as e:  # a command that exits instead of returning
        return e.code if isinstance(e.code, int) else EXIT_CRASH
    except BaseException:
        traceback.print_exc()
        return EXIT_CRASH
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--":
        args = args[1:]
    sys.exit(serve(args))

"""`python shim.py STATUS -- PROGRAM ARGS...`: runs a job as its child and writes the
child's exit status to STATUS (atomically) when it ends.

The agent starts every run through this shim, as the leader of the run's process
group, so that an agent restarted while the job ran can still learn how it ended
(a process that is not your child cannot be waited for). Signals sent to the group
(SIGTERM on cancel) reach the job; the shim itself outlives them to write the
status. Standard library only: it starts in a few milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys


def _write(path: str, status: dict[str, object]) -> None:
    partial = f"{path}.tmp"
    with open(partial, "w") as handle:
        json.dump(status, handle)
    os.replace(partial, path)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: shim.py STATUS -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    status, command = argv[0], argv[2:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)  # a handler (not SIG_IGN): exec resets it
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        _write(status, {"exitCode": 127, "error": f"cannot start {command[0]}: {exc.strerror}"})
        return 127
    code = child.wait()  # PEP 475: retried across the signals the handler swallows
    _write(status, {"exitCode": code})
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

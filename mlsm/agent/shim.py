"""Runs a job as its child and writes the child's exit status to STATUS (atomically)
when it ends:

    python shim.py STATUS [--cpus 0,1] [--memory BYTES | --cgroup DIR] -- PROGRAM ARGS...

What a job is allowed is enforced here, so that it holds while no agent watches:
`--cpus` pins the job to those CPUs (affinity, inherited by all it starts);
`--cgroup` joins the run's memory cgroup (made by the agent) before the job starts,
so that the kernel holds its memory limit; where there is none, `--memory` is
watched as Slurm's OverMemoryKill does: every quarter second the
resident memory of every process in the run's group but the shim is summed, and
past the limit they are all killed and the status says OOMKilled, with what was
used and what was allowed.

The agent starts every run through this shim, as the leader of the run's process
group, so that an agent restarted while the job ran can still learn how it ended
(a process that is not your child cannot be waited for). Signals sent to the group
(SIGTERM on cancel) reach the job; the shim itself outlives them to write the
status. Standard library only: it starts in a few milliseconds.
"""

from __future__ import annotations

import contextlib
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


PAGE = os.sysconf("SC_PAGE_SIZE")
WATCH_SECONDS = 0.25


def _group_rss(group: int, me: int) -> tuple[int, list[int]]:
    """Resident bytes of the processes in `group` but `me`, and their pids."""
    total, pids = 0, []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # (pgrp: the third field after the name)
            total += int(fields[21]) * PAGE  # rss, in pages
            pids.append(int(entry))
    return total, pids


def _size(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"


def _watch(child: subprocess.Popen[bytes], memory: int) -> dict[str, object]:
    """Wait for the child, ending the whole group past `memory` resident bytes."""
    group, me = os.getpgid(0), os.getpid()
    while True:
        try:
            code = child.wait(WATCH_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        else:
            return {"exitCode": code}
        used, pids = _group_rss(group, me)
        if used > memory:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            code = child.wait()
            message = f"killed for memory: its processes used {_size(used)}, over the "
            message += f"{_size(memory)} it is allowed (resources.memory)"
            return {"exitCode": code, "reason": "OOMKilled", "message": message}


def main(argv: list[str]) -> int:
    options: dict[str, str] = {}
    while len(argv) > 2 and argv[1] in ("--cpus", "--memory", "--cgroup"):
        options[argv[1]] = argv[2]
        del argv[1:3]
    if len(argv) < 3 or argv[1] != "--":
        usage = "usage: shim.py STATUS [--cpus 0,1] [--memory BYTES] -- PROGRAM [ARGS...]"
        print(usage, file=sys.stderr)
        return 2
    status, command = argv[0], argv[2:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)  # a handler (not SIG_IGN): exec resets it
    if "--cpus" in options:
        os.sched_setaffinity(0, {int(c) for c in options["--cpus"].split(",")})
    if "--cgroup" in options:  # the job, and all it starts, in the run's memory cgroup
        try:
            with open(os.path.join(options["--cgroup"], "cgroup.procs"), "w") as procs:
                procs.write(str(os.getpid()))
        except OSError as exc:
            _write(status, {"exitCode": 126, "error": f"cannot join {options['--cgroup']}: {exc}"})
            return 126
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        _write(status, {"exitCode": 127, "error": f"cannot start {command[0]}: {exc.strerror}"})
        return 127
    if "--memory" in options:
        ended = _watch(child, int(options["--memory"]))
    else:  # PEP 475: the wait is retried across the signals the handler swallows
        ended = {"exitCode": child.wait()}
    if "--cgroup" in options:  # leave it, so that the agent can remove it
        parent = os.path.dirname(os.path.normpath(options["--cgroup"]))
        with contextlib.suppress(OSError), open(os.path.join(parent, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))
    _write(status, ended)
    code = int(str(ended["exitCode"]))
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Finding the processes a test started, so it can end exactly those (by pid, never by name)."""

from __future__ import annotations

import os
import signal


def descendants(pid: int) -> list[int]:
    """Every process below `pid` in the process tree."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, stack = [], [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="ignore")
    except OSError:
        return ""


def pids_with(text: str) -> list[int]:
    """Processes whose command line contains `text` (e.g. a test's own Ray temp dir)."""
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and text in cmdline(int(d))]


def kill(pids) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass

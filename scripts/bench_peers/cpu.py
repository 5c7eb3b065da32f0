"""CPU time per image, read from Linux /proc: a server's whole process tree (MLServer's
inference worker included) and the driver's own process (the tritonclient callers, or
bare ONNX Runtime, which runs in it). Unlike images/s it barely moves with the load of a
shared machine, and it says what a server costs besides how fast it answers."""

import os
import resource

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid):
    """(parent pid, utime + stime in seconds) of one process."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # Fields after "(comm)": state, ppid, ..., utime and stime are the 12th and 13th.
    rest = text[text.rindex(")") + 2:].split()
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICK


def tree_seconds(root):
    """CPU seconds used so far by `root` and its live descendants."""
    cpu, children = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid, seconds = _stat(int(name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        cpu[int(name)] = seconds
        children.setdefault(ppid, []).append(int(name))
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += cpu.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total


def self_seconds():
    """CPU seconds used so far by this process (every thread)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def snapshot(server_pid):
    """(server tree, this process) CPU seconds; the server's is None in-process."""
    return (tree_seconds(server_pid) if server_pid else None), self_seconds()


def per_image_ms(before, after, images):
    """Server and driver CPU milliseconds per image between two snapshots."""
    server = None if before[0] is None else 1e3 * (after[0] - before[0]) / images
    return server, 1e3 * (after[1] - before[1]) / images

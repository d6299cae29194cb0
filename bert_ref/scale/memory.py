"""This process's memory, from /proc (Linux).
"""

from __future__ import annotations


def proc_status(field: str) -> int | None:
    """A size field of /proc/self/status (Linux) in bytes, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss() -> int | None:
    """This process's resident set size in bytes (Linux), or None."""
    return proc_status("VmRSS")


def peak_rss() -> int | None:
    """This process's peak resident set size in bytes (Linux's VmHWM), or None. (Not getrusage's
    ru_maxrss: a spawned process inherits its parent's through fork and exec.)"""
    return proc_status("VmHWM")

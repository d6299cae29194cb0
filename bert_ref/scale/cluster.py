"""Connecting to a Dask cluster, with errors that name the address and what was expected there.

A server on the scheduler's port that is not a Dask scheduler (a web server, a typo'd port, a
service that sends garbage) makes `distributed` read the first 8 bytes of its answer as the size
of a message and fail with "Maximum allowed dimension exceeded" or a `MemoryError`; `connect`
says instead which address answered, what it sent when that is readable ("HTTP/1.1"), and what
should be listening there.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from bert_ref.model import limits


def _first_bytes(raw: bytes) -> str:
    """What a server's first 8 bytes say, read as Dask reads them (a message size)."""
    if all(32 <= b < 127 for b in raw):
        hint = " (an HTTP server)" if raw.startswith(b"HTTP/") else ""
        return f": it answered {raw.decode('ascii')!r}...{hint}"
    return f": its first bytes announce a message of {int.from_bytes(raw, 'little'):,} bytes"


def _sent(exc: BaseException) -> str:
    """What the server sent, when `distributed` failed on its first 8 bytes read as a size (NumPy's
    MemoryError carries the size it was asked for)."""
    sizes = [a for a in exc.args if isinstance(a, tuple) and a and isinstance(a[0], int)]
    if not sizes or not 0 <= sizes[0][0] < 1 << 64:
        return ""
    return _first_bytes(sizes[0][0].to_bytes(8, "little"))


def describe_failure(address: str, exc: BaseException | None, timeout_s: float, what: str = "") -> str:
    """The one-line message for a failed connection to `address` (`what` happened, or `exc`)."""
    if what:
        pass
    elif isinstance(exc, (MemoryError, ValueError, OverflowError)):
        what = f"the server there does not speak Dask's protocol{_sent(exc)}"
    elif isinstance(exc, TimeoutError) or "timed out" in str(exc).lower():
        what = f"no Dask scheduler answered within {timeout_s:g} s ({' '.join(str(exc).split())[:200]})"
    elif isinstance(exc, ConnectionRefusedError):
        what = "nothing listens there (connection refused)"
    else:
        what = f"cannot connect ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    return (f"--scheduler {address}: {what}; expected a Dask scheduler there (`dask scheduler --host {host or 'HOST'} "
            f"--port {port or 8786}`): check the address and port, and that the scheduler runs and is reachable "
            "from this machine")


#: A Dask scheduler's first message (its handshake) is a few hundred bytes.
MAX_HANDSHAKE_BYTES = 1 << 20


def probe(address: str, timeout_s: float) -> None:
    """Check that a Dask scheduler listens at a `tcp://` address before `distributed` reads from it:
    a scheduler sends its handshake as soon as it accepts, its first 8 bytes the message's size.

    Raises:
        ConnectionError: nothing listens there, nothing was sent within `timeout_s` (a web server
            waits for a request), or the first bytes are not a Dask message's size.
    """
    host, _, port = address.split("://", 1)[1].rpartition(":")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    except ValueError:
        raise ConnectionError(f"--scheduler {address}: expected tcp://HOST:PORT (a Dask scheduler's address, "
                              "e.g. tcp://127.0.0.1:8786)") from None
    except OSError as e:
        raise ConnectionError(describe_failure(address, e, timeout_s)) from None
    first = b""
    try:
        with sock:
            deadline = time.monotonic() + timeout_s
            while len(first) < 8:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(8 - len(first))
                if not chunk:
                    break
                first += chunk
    except TimeoutError:
        raise ConnectionError(describe_failure(address, None, timeout_s, (
            f"the server there accepted the connection but sent nothing within {timeout_s:g} s (a Dask scheduler "
            "sends its handshake at once; a web server, for one, waits for a request)"))) from None
    except OSError as e:
        raise ConnectionError(describe_failure(address, e, timeout_s)) from None
    if len(first) < 8:
        raise ConnectionError(describe_failure(address, None, timeout_s, (
            f"the server there closed the connection after {len(first)} byte(s), where a Dask scheduler sends its "
            "handshake")))
    if not 0 < int.from_bytes(first, "little") <= MAX_HANDSHAKE_BYTES:
        raise ConnectionError(describe_failure(address, None, timeout_s,
                                               f"the server there does not speak Dask's protocol{_first_bytes(first)}"))


def connect(address: str, timeout_s: float | None = None) -> Any:
    """A `distributed.Client` connected to the scheduler at `address` (`tcp://` addresses are
    probed first, see `probe`). `timeout_s` bounds the connection and the handshake (default
    BERT_REF_CONNECT_TIMEOUT, 30 s).

    Raises:
        ConnectionError: naming `address`, what answered there (or that nothing did) and what was
            expected; ImportError when dask.distributed is missing.
    """
    try:
        from distributed import Client
    except ImportError:
        raise ImportError("a Dask cluster needs dask.distributed: install it with "
                          '`pip install "bert-ref[scale]"`') from None
    if timeout_s is None:
        timeout_s = float(limits.limit("connect_timeout"))
    if address.startswith("tcp://"):
        probe(address, timeout_s)
    try:
        return Client(address, timeout=f"{timeout_s:g}s")
    except Exception as e:  # distributed's own errors, and what its reader raises on a stranger's bytes
        raise ConnectionError(describe_failure(address, e, timeout_s)) from None

"""Network guard for the test session and every Python process it starts.

Put on PYTHONPATH (with RADCLIP_NETGUARD_LOG set) by tests/conftest.py, so Ray
workers, DVC stages and servers started by tests inherit it. Any socket
connection or name lookup beyond loopback is refused and written to the log,
which the test session checks at its end.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

# The machine's own name resolves through /etc/hosts to a local address.
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "", socket.gethostname().lower()}


def _is_loopback_host(host) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port): the local wildcard
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False  # a name other than localhost: resolving it could leave the machine
    return address.is_loopback or address.is_unspecified


def _target(event: str, args: tuple):
    """The host an audited socket event is about, or None when it is local by nature."""
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        address = args[1] if event == "socket.connect" else args[-1]
        if isinstance(address, tuple) and address:
            return address[0]
        return None  # AF_UNIX path, or no address
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        return args[0]
    return None


def _guard(event: str, args: tuple) -> None:
    if not event.startswith("socket."):
        return
    host = _target(event, args)
    if host is None and event not in ("socket.getaddrinfo",):
        return
    if _is_loopback_host(host):
        return
    log = os.environ.get("RADCLIP_NETGUARD_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(f"pid={os.getpid()} argv={' '.join(sys.argv)[:200]!r} {event} {host!r}\n")
    raise OSError(f"radclip network guard: {event} to {host!r} refused (only loopback is allowed)")


if os.environ.get("RADCLIP_NETGUARD_LOG"):
    sys.addaudithook(_guard)

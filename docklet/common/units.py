"""Units both processes read: durations ('1m30s'), port mappings ('8080:80'), sizes.

Plain functions over the standard library: the agent parses an app's durations and
ports with them without loading the app-spec model.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any, NamedTuple

DURATION_PATTERN = r"^(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+$"
# [IP:HOST:]CONTAINER or HOST:CONTAINER, then /tcp or /udp; IP is IPv4 or [IPv6].
# Groups: 1 IP, 2 host port, 3 container port, 4 protocol (parse_port reads them).
PORT_PATTERN = (
    r"^(?:(?:([0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.]{2,45}\]):)?([0-9]{1,5}):)?"
    r"([0-9]{1,5})(?:/(tcp|udp))?$"
)
PORT_FORMAT = "expected [IP:]HOST:CONTAINER[/udp], e.g. 8080:80"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION = 7 * 24 * 3600.0
MAX_DURATION_TEXT = 64  # characters of a duration string: '1h1h1h…' needs no more


def short(value: Any, limit: int = 100) -> str:
    """A value for an error message: repr, cut so a 64 KiB value stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}…{text[-4:]}"


def parse_duration(value: float | str) -> float:
    """Seconds from a number or a string like '1m30s'."""
    if isinstance(value, int | float):
        if not 0 <= value <= MAX_DURATION:  # also refuses NaN and infinity
            raise ValueError(f"{value} is not a duration from 0 to {MAX_DURATION:g} seconds")
        return float(value)
    if len(value) > MAX_DURATION_TEXT or not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"{short(value)} is not a duration (try '10s', '1m30s', '500ms')")
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", value)
    return parse_duration(sum(float(n) * _UNITS[u] for n, u in parts))


class PortMapping(NamedTuple):
    host_ip: str
    host_port: int | None  # None: Docker picks a free one
    container_port: int
    protocol: str


def parse_port(text: str) -> PortMapping:
    """'[IP:HOST:]CONTAINER[/proto]' or 'HOST:CONTAINER' as Docker's -p reads it."""
    match = re.fullmatch(PORT_PATTERN, text)
    if match is None:
        raise ValueError(f"port mapping {short(text)}: {PORT_FORMAT}")
    ip, host, container, protocol = match.groups()
    host_ip = ""
    if ip:
        try:
            address = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            raise ValueError(f"port mapping {text!r}: {ip} is not an IP address") from None
        if (address.version == 6) != ip.startswith("["):
            raise ValueError(f"port mapping {text!r}: only an IPv6 address goes in brackets")
        host_ip = str(address)
    numbers = [int(n) for n in (host, container) if n is not None]
    if any(not 1 <= n <= 65535 for n in numbers):
        raise ValueError(f"port mapping {text!r}: ports are 1 to 65535")
    return PortMapping(
        host_ip=host_ip,
        host_port=int(host) if host else None,
        container_port=int(container),
        protocol=protocol or "tcp",
    )


def size_text(n: int) -> str:
    """'3.2 MiB', '256 KiB': rounded up, so a file just over a limit never reads as at it."""
    for unit, name in ((1024 * 1024, "MiB"), (1024, "KiB")):
        if n >= unit:
            return f"{math.ceil(n * 10 / unit) / 10:g} {name}"
    return f"{n} bytes"

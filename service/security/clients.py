"""Who a client is without API keys: its address, and the short tag its sessions are counted under.

The client is the connection's peer address; when the peer is a trusted proxy (`LSTM_SERVE_TRUSTED_PROXIES`, IPs
or CIDRs), X-Forwarded-For is read from the right and the first hop that is not a trusted proxy is the client (a
proxy appends the address it saw, so hops to the left of that one are the client's own claims and are ignored).

The tag is "c" and 64 bits of the address's SHA-256: it goes in front of the session ids of that client's sessions
(service/session_ids.py), where the engine and the stores count sessions per owner exactly as they do for API keys.
Loopback clients get no tag: the host itself (or a sidecar proxy) is not one client among many, and its sessions
are counted only against max_sessions, as before.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache

from service.session_ids import CLIENT_TAG_PREFIX, is_client_tag

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
__all__ = ["client_address", "client_tag", "is_client_tag", "parse_networks"]


@lru_cache(maxsize=16)
def parse_networks(spec: str) -> tuple[Network, ...]:
    """Parse "10.0.0.0/8, 192.168.1.7" into networks; a ValueError naming an entry that is neither an IP nor a CIDR."""
    networks = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"trusted_proxies: {entry!r} is not an IP address or a CIDR") from None
    return tuple(networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    ip = _ip(address)
    return ip is not None and any(ip in net for net in networks)


def client_address(peer: str | None, forwarded_for: Iterable[str], networks: Sequence[Network]) -> str | None:
    """The client's address: the peer, or behind trusted proxies the rightmost X-Forwarded-For hop that is not one
    (the leftmost hop when all are trusted). `forwarded_for`: the header's values, in order."""
    if peer is None or not networks or not _trusted(peer, networks):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop
    return hops[0] if hops else peer


def client_tag(address: str | None) -> str:
    """The owner tag of a client's sessions: "c" + 16 hex digits; "" for loopback or an unknown address."""
    if not address:
        return ""
    ip = _ip(address)
    if ip is not None:
        if ip.is_loopback:
            return ""
        address = str(ip)
    return CLIENT_TAG_PREFIX + hashlib.sha256(address.encode()).digest()[:8].hex()

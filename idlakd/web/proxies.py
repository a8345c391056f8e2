"""The client's address: the TCP peer, or what a trusted reverse proxy says the client was.

Only when the peer is one of `trusted_proxies` are `X-Forwarded-For` and `Forwarded` read, from
the right: each trusted proxy appends the address it saw, so the right-most address that is not
itself a trusted proxy is the client; everything left of it came from the client and may be
forged. When both headers are present and name different clients, neither is believed (one of
them came from the client through a proxy that only sets the other).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Awaitable, Callable, Final, Iterable, Sequence

from aiohttp import web

from idlakd.config import ConfigError
from idlakd.web.access import Handler
from idlakd.web.keys import client_address_key

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
UNKNOWN: Final = "unknown"


class TrustedProxies:
    """The networks whose forwarding headers are believed (none by default)."""

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self.networks: tuple[Network, ...] = tuple(networks)

    @classmethod
    def parse(cls, setting: str) -> "TrustedProxies":
        """From 'addr, net/len, ...'; raise ConfigError naming a bad entry."""
        networks = []
        for item in setting.split(","):
            item = item.strip()
            if item:
                try:
                    networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise ConfigError(f"setting 'trusted_proxies': {item!r} is not an address or "
                                      "network") from None
        return cls(networks)

    def trusts(self, address: Address) -> bool:
        """Whether address is one of the trusted proxies."""
        return any(address in network for network in self.networks)

    def client(self, peer: str | None, forwarded_for: Sequence[str] | None,
               forwarded: Sequence[str] | None) -> str:
        """The client address of a request from peer with these header values (None: absent)."""
        peer_address = parse_address(peer)
        if peer_address is None:
            return peer or UNKNOWN
        if not self.networks or not self.trusts(peer_address):
            return str(peer_address)
        found = [self._rightmost_untrusted(hops)
                 for hops in (forwarded_for, forwarded) if hops is not None]
        if not found or any(address is None for address in found):
            return str(peer_address)
        if len(set(found)) > 1:
            log.debug("X-Forwarded-For and Forwarded disagree; using the proxy's address")
            return str(peer_address)
        return str(found[0])

    def _rightmost_untrusted(self, hops: Sequence[str]) -> Address | None:
        """The right-most hop that is not a trusted proxy (the left-most when all are);
        None when a hop that must be read is not an address."""
        address = None
        for hop in reversed(hops):
            address = parse_address(hop)
            if address is None:
                return None
            if not self.trusts(address):
                return address
        return address


def parse_address(text: str | None) -> Address | None:
    """An IP address from a peer or header value ('1.2.3.4', '1.2.3.4:80', '[::1]:80'), or None.

    IPv4 seen through a dual-stack socket (::ffff:1.2.3.4) is the IPv4 address.
    """
    if not text:
        return None
    text = text.strip().strip('"')
    if text.startswith("["):  # [v6] or [v6]:port (Forwarded)
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_for_hops(request: web.BaseRequest) -> list[str] | None:
    """Every X-Forwarded-For hop, left to right (several headers read as one list), or None."""
    values = request.headers.getall("X-Forwarded-For", None)
    if values is None:
        return None
    return [hop.strip() for value in values for hop in value.split(",")]


def forwarded_hops(request: web.BaseRequest) -> list[str] | None:
    """The for= of each Forwarded element, left to right ('' for an element without one), or None."""
    if "Forwarded" not in request.headers:
        return None
    return [element.get("for", "") for element in request.forwarded]


def client_address(request: web.BaseRequest) -> str:
    """The request's client address as the middleware found it (the peer before it ran)."""
    address = request.get(client_address_key)
    return address if address is not None else (request.remote or "-")


def client_address_middleware(proxies: TrustedProxies) -> Middleware:
    """The outermost middleware: find the client's address once, for the throttle, the access
    log and quotas."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[client_address_key] = proxies.client(
            request.remote, forwarded_for_hops(request), forwarded_hops(request))
        return await handler(request)

    return middleware

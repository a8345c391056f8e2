"""The client's address: the TCP peer, or what a trusted reverse proxy says the client was.

Only when the peer is one of `trusted_proxies` is the header the proxies write
(`forwarded_header`: X-Forwarded-For or Forwarded, never both) read, from the right: each trusted
proxy appends the address it saw, so the right-most address that is not itself a trusted proxy
is the client; everything left of it came from the client and may be forged. The other header
is never read: a proxy that writes one passes the other through as the client sent it.
"""

from __future__ import annotations

import ipaddress
from typing import Awaitable, Callable, Final, Iterable, Sequence

from aiohttp import web

from idlakd.config import ConfigError
from idlakd.web.access import Handler
from idlakd.web.keys import client_address_key


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
UNKNOWN: Final = "unknown"


X_FORWARDED_FOR: Final = "X-FORWARDED-FOR"
FORWARDED: Final = "FORWARDED"


class TrustedProxies:
    """The networks whose forwarding header is believed (none by default), and which header."""

    def __init__(self, networks: Iterable[Network] = (), header: str = X_FORWARDED_FOR) -> None:
        self.networks: tuple[Network, ...] = tuple(networks)
        self.header = header

    @classmethod
    def parse(cls, setting: str, header: str = X_FORWARDED_FOR) -> "TrustedProxies":
        """From 'addr, net/len, ...' and the header's name (upper case, as the setting holds
        it); raise ConfigError naming a bad entry."""
        networks = []
        for item in setting.split(","):
            item = item.strip()
            if item:
                try:
                    networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise ConfigError(f"setting 'trusted_proxies': {item!r} is not an address or "
                                      "network") from None
        return cls(networks, header)

    def trusts(self, address: Address) -> bool:
        """Whether address is one of the trusted proxies."""
        return any(address in network for network in self.networks)

    def client(self, peer: str | None, hops: Sequence[str] | None) -> str:
        """The client address of a request from peer whose forwarding header holds these hops,
        left to right (None: absent)."""
        peer_address = parse_address(peer)
        if peer_address is None:
            return peer or UNKNOWN
        if not self.networks or not self.trusts(peer_address) or not hops:
            return str(peer_address)
        return str(self._rightmost_untrusted(hops) or peer_address)

    def _rightmost_untrusted(self, hops: Sequence[str]) -> Address | None:
        """The right-most hop that is not a trusted proxy. Where every hop read is trusted, or
        one is not an address (written by a client in a trusted network, or "unknown"), the
        left-most trusted hop read: the nearest to the client that a trusted proxy vouches
        for; None when the right-most hop is not an address."""
        nearest = None
        for hop in reversed(hops):
            address = parse_address(hop)
            if address is None:
                return nearest
            if not self.trusts(address):
                return address
            nearest = address
        return nearest

    def hops(self, request: web.BaseRequest) -> list[str] | None:
        """The hops of the header the proxies write, left to right, or None when absent."""
        if self.header == FORWARDED:
            return forwarded_hops(request)
        return forwarded_for_hops(request)


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
        request[client_address_key] = proxies.client(request.remote, proxies.hops(request))
        return await handler(request)

    return middleware

"""Fetching images by URL, when the operator allows it: http(s) only, hosts from an allow-list, and never an address
that is not public.

The host is resolved once, every resolved address is checked (loopback, private, link-local, multicast, reserved and
unspecified addresses are refused: this is what keeps a request from reaching the machine's own services or the
cloud metadata endpoint), and the connection goes to the checked address (a DNS answer that changes between check
and connect cannot redirect it). Redirects are not followed. The body is read up to ``max_bytes`` within
``timeout_s`` overall.
"""
from __future__ import annotations

import fnmatch
import http.client
import ipaddress
import socket
import ssl
import time
from typing import Callable
from urllib.parse import urlsplit

from clipforge.serving.inputs import InputError


def public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def host_allowed(host: str, patterns: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(host, p.lower()) for p in patterns)


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise InputError(f"cannot resolve {host}: {e.strerror}") from None
    return sorted({info[4][0] for info in infos})


def fetch(url: str, hosts: tuple[str, ...], max_bytes: int, timeout_s: float,
          is_allowed_address: Callable[[str], bool] = public_address) -> bytes:
    """The body of a GET on ``url``, or ``InputError`` (400/413) saying which rule refused it."""
    if not hosts:
        raise InputError("image URLs are not enabled on this server: send the image bytes (base64 or upload), or "
                         "start the server with --allow-url-host HOST")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InputError(f"only http(s) image URLs are fetched, not {parts.scheme!r}")
    host = parts.hostname or ""
    if not host or parts.username or parts.password:
        raise InputError("an image URL needs a host and no user:password")
    if not host_allowed(host, hosts):
        raise InputError(f"host {host!r} is not in the server's URL allow-list")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = resolve(host, port)
    refused = [a for a in addresses if not is_allowed_address(a)]
    if refused or not addresses:
        raise InputError(f"host {host!r} resolves to a non-public address ({', '.join(refused) or 'none'}): refused")
    deadline = time.monotonic() + timeout_s
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = _connection(parts.scheme, host, addresses[0], port, timeout_s)
    try:
        connection.request("GET", path, headers={"Host": parts.netloc.rsplit("@", 1)[-1], "User-Agent": "clipforge",
                                                 "Accept": "image/*"})
        response = connection.getresponse()
        if response.status != 200:
            raise InputError(f"fetching {url}: HTTP {response.status} (redirects are not followed)")
        length = response.getheader("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise InputError(f"{url}: {length} bytes, more than the limit of {max_bytes}", 413)
        body = bytearray()
        while len(body) <= max_bytes:
            if time.monotonic() > deadline:
                raise InputError(f"fetching {url} took longer than {timeout_s} s")
            chunk = response.read(min(65536, max_bytes + 1 - len(body)))
            if not chunk:
                return bytes(body)
            body += chunk
        raise InputError(f"{url}: more than the limit of {max_bytes} bytes", 413)
    except (OSError, http.client.HTTPException) as e:
        raise InputError(f"fetching {url} failed: {type(e).__name__}: {e}") from None
    finally:
        connection.close()


def _connection(scheme: str, host: str, address: str, port: int, timeout_s: float):
    """A connection to the checked ``address``; TLS still verifies the certificate against ``host``."""
    if scheme == "http":
        connection = http.client.HTTPConnection(address, port, timeout=timeout_s)
    else:
        context = ssl.create_default_context()

        class _Pinned(http.client.HTTPSConnection):
            def connect(self):
                sock = socket.create_connection((address, port), timeout_s)
                self.sock = context.wrap_socket(sock, server_hostname=host)

        connection = _Pinned(host, port, timeout=timeout_s, context=context)
    return connection

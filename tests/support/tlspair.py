"""A TLS handshake between two SSLContexts in memory (no sockets), and the test PKI."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from proxy.tls.certs import LOCAL_IPS, LOCAL_NAMES, ThrowawayCA


@dataclass(frozen=True, slots=True)
class TestPKI:
    __test__ = False  # not a test class

    directory: Path
    ca: ThrowawayCA
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # CN alice, SAN email alice@example.org, DNS alice.example.org
    client_key: Path
    other_ca_file: Path  # a CA that signed nothing here
    cecil_cert: Path  # CN cecil: the suite's certificate-authenticated role
    cecil_key: Path


def make_pki(directory: Path) -> TestPKI:
    ca = ThrowawayCA()
    ca_file = ca.write_ca(directory)
    server_cert, server_key = ca.issue("pgwarden", dns=LOCAL_NAMES, ips=LOCAL_IPS).write(
        directory, "server"
    )
    client_cert, client_key = ca.issue(
        "alice",
        emails=["alice@example.org"],
        dns=["alice.example.org"],
        server=False,
        client=True,
    ).write(directory, "alice")
    other = ThrowawayCA("unrelated CA").write_ca(directory, "other-ca")
    cecil_cert, cecil_key = ca.issue("cecil", server=False, client=True).write(directory, "cecil")
    return TestPKI(
        directory,
        ca,
        ca_file,
        server_cert,
        server_key,
        client_cert,
        client_key,
        other,
        cecil_cert,
        cecil_key,
    )


def handshake(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    server_hostname: str | None = "localhost",
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run the handshake to completion; the first SSLError of either side is raised."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    done = {id(server): False, id(client): False}
    for _ in range(20):
        for obj in (client, server):
            if done[id(obj)]:
                continue
            try:
                obj.do_handshake()
                done[id(obj)] = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server judges the client certificate after the client is done;
            # one application round trip surfaces that verdict on the client.
            client.write(b"x")
            s_in.write(c_out.read())
            server.read(1)
            return server, client
    raise AssertionError("the handshake did not finish")

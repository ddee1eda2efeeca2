"""One client connection: asyncio adapters over the sans-IO relay pieces.

* :mod:`proxy.session.adapter` — :class:`Session`: the relay after login, its lifecycle and
  back-pressure, and holding client bytes until their audit events are in the trail;
* :mod:`proxy.session.login` — from the first byte to ReadyForQuery: encryption, startup,
  authentication (relayed or pgwarden's own), the server leg, cancel requests;
* :mod:`proxy.session.stalls` — the tasks a stalled relay waits for (analysis off the loop,
  catalog look-ups, reviews);
* :mod:`proxy.session.sides` — the asyncio protocols of the two sockets.

The protocol logic itself lives in :mod:`proxy.relay` and :mod:`proxy.wire`, tested from bytes.
"""

from proxy.session.adapter import Session, client_protocol_factory

__all__ = ["Session", "client_protocol_factory"]

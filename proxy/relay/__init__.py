"""The relay of one client connection, as sans-IO pieces; :mod:`proxy.session` is the asyncio
adapter on top."""

"""Sans-IO PostgreSQL v3 wire codec: bytes in, message boundaries and decoded values out.

Nothing here touches a socket. The session feeds received bytes in and writes out whatever
bytes the codec (or the session) decides to forward or create.
"""

"""The SOCP server: an asyncio + websockets shell around :class:`socp.server.ServerState`."""

"""The store, underneath everything: settings, connections, the engine's tables, the embedded
server, the layout of `data/` and the daily difficulty table."""

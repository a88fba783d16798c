"""The domain: Node, Hub, Client, channels, auth and the ports the edges implement.

The core imports no backend and no transport; see ``ports.py``.
"""

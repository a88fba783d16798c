"""kizuna (絆): a realtime messaging server with observability built in."""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""Thin adapters between I/O and core.Client: framing and lifecycle only."""

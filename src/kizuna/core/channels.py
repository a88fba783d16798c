"""Channel names, namespaces and who may do what in them.

A channel is ``<namespace>:<name>`` (``chat:room-42``). The namespace decides
the rules (history, presence, who may publish); a token's ``channels`` claim
can narrow them further. These rules are shared by every transport, so they
live here and nowhere else.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from kizuna.core.options import NamespaceOptions
from kizuna.core.ports import Credentials
from kizuna.exceptions import ProtocolError
from kizuna.protocol.codes import ErrorCode

__all__ = ["ChannelRules", "namespace_of"]

NAMESPACE_SEPARATOR = ":"


def namespace_of(channel: str) -> str:
    """The namespace part of a channel name ('' when the name has none)."""
    ns, sep, _ = channel.partition(NAMESPACE_SEPARATOR)
    return ns if sep else ""


class ChannelRules:
    """Resolves a channel's namespace and checks permissions against it."""

    def __init__(self, namespaces: dict[str, NamespaceOptions]) -> None:
        self._namespaces = namespaces

    @property
    def namespaces(self) -> dict[str, NamespaceOptions]:
        return self._namespaces

    def options(self, channel: str) -> NamespaceOptions:
        """The namespace options of ``channel``; 102 unknown channel when there are none."""
        ns = namespace_of(channel)
        options = self._namespaces.get(ns)
        if options is None or not channel[len(ns) + 1 :]:
            raise ProtocolError(ErrorCode.UNKNOWN_CHANNEL, f"unknown channel {channel!r}")
        return options

    def check_subscribe(self, channel: str, credentials: Credentials | None) -> NamespaceOptions:
        options = self.options(channel)
        self._check_access(channel, options, credentials)
        return options

    def check_publish(self, channel: str, credentials: Credentials | None) -> NamespaceOptions:
        options = self.options(channel)
        if not options.allow_publish:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "clients may not publish here")
        self._check_access(channel, options, credentials)
        return options

    def check_read(self, channel: str, credentials: Credentials | None) -> NamespaceOptions:
        """History and presence: the same access as subscribing."""
        return self.check_subscribe(channel, credentials)

    @staticmethod
    def _check_access(
        channel: str, options: NamespaceOptions, credentials: Credentials | None
    ) -> None:
        if credentials is None:
            if not options.allow_anonymous:
                raise ProtocolError(ErrorCode.PERMISSION_DENIED, "anonymous access not allowed")
            return
        allowed = credentials.channels
        if allowed is not None and not any(fnmatchcase(channel, p) for p in allowed):
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "channel not in token's channels")

"""OpenTelemetry traces for the core's Tracer port.

Tracing is off unless the standard OpenTelemetry variables ask for it
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or
``OTEL_TRACES_EXPORTER=otlp``/``console``), and ``OTEL_SDK_DISABLED=true`` turns
it off again. The SDK itself reads the rest: ``OTEL_SERVICE_NAME`` (default
``kizuna``), ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` (kizuna
defaults to ``parentbased_traceidratio`` at 0.1 when none is set), headers,
timeouts. Nothing here is imported when tracing is off, so a bare install
needs no OpenTelemetry.

One message, one trace: ``publish`` (producer) on the publishing node puts its
W3C ``traceparent`` in the message envelope; every node that delivers it opens
a ``deliver`` (consumer) span whose parent is that traceparent. A fan-out is
one span per node, never one per recipient.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kizuna.core.events import Span, Tracer

__all__ = ["OTelTracer", "tracing_requested"]

_DEFAULT_SAMPLER = "parentbased_traceidratio"
_DEFAULT_RATIO = "0.1"


def tracing_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* environment asks for traces."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").lower()
    if exporter == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or exporter in {"otlp", "console"}
    )


class _OTelSpan:
    """A started span, made current until it ends so log lines carry its ids.

    The core ends every span in the coroutine that started it, which is what
    makes attaching and detaching the context safe under asyncio.
    """

    __slots__ = ("_span", "_token")

    def __init__(self, span: Any) -> None:
        from opentelemetry import context, trace

        self._span = span
        self._token = context.attach(trace.set_span_in_context(span))

    @property
    def traceparent(self) -> str | None:
        ctx = self._span.get_span_context()
        if not ctx.is_valid:
            return None
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def end(self, error: str | None = None) -> None:
        from opentelemetry import context

        if error is not None:
            from opentelemetry.trace import StatusCode

            self._span.set_status(StatusCode.ERROR, error)
        self._span.end()
        context.detach(self._token)


class OTelTracer:
    """Tracer backed by the OpenTelemetry SDK with an OTLP/HTTP exporter."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        env = os.environ if env is None else env
        os.environ.setdefault("OTEL_TRACES_SAMPLER", _DEFAULT_SAMPLER)
        os.environ.setdefault("OTEL_TRACES_SAMPLER_ARG", _DEFAULT_RATIO)
        resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "kizuna")})
        self.provider = TracerProvider(resource=resource)
        exporter: SpanExporter
        if env.get("OTEL_TRACES_EXPORTER", "").lower() == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(self.provider)
        self._tracer = self.provider.get_tracer("kizuna")
        self._propagator = TraceContextTextMapPropagator()
        self._kinds = {
            "server": trace.SpanKind.SERVER,
            "client": trace.SpanKind.CLIENT,
            "producer": trace.SpanKind.PRODUCER,
            "consumer": trace.SpanKind.CONSUMER,
            "internal": trace.SpanKind.INTERNAL,
        }

    def start(
        self,
        name: str,
        kind: str,
        attributes: dict[str, str | int],
        parent: str | None = None,
    ) -> Span:
        context = None
        if parent is not None:
            context = self._propagator.extract({"traceparent": parent})
        span = self._tracer.start_span(
            name, context=context, kind=self._kinds[kind], attributes=attributes
        )
        return _OTelSpan(span)

    def shutdown(self) -> None:
        """Flush what is batched; called when the server stops."""
        self.provider.shutdown()


def _implements_port(tracer: OTelTracer) -> Tracer:
    return tracer  # checked by mypy: OTelTracer implements the core's Tracer port

"""referral-web's Prometheus metrics, built once per process on its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from referral_runtime.build_info import register_build_info
from referral_runtime.process_metrics import register_process_metrics


class WebMetrics:
    """Requests and their latency by route, page links, landings, visit counting, readiness."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        registry = self.registry
        register_process_metrics(registry)
        register_build_info(registry)
        self.requests = Counter(
            "referrals_web_requests",
            "HTTP requests answered, by route template (never the raw path), method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "referrals_web_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.page_links = Counter(
            "referrals_web_page_links",
            "Referrer page requests by what their link was: valid, missing, tampered, expired, "
            "unknown_account",
            ["result"],
            registry=registry,
        )
        self.landings = Counter(
            "referrals_web_landings",
            "Landing page views by what the code was: active, alias, revoked, unknown, malformed",
            ["kind"],
            registry=registry,
        )
        self.visits_flushed = Counter(
            "referrals_web_visits_flushed",
            "Landing visits written to code_visits",
            registry=registry,
        )
        self.visit_flush_failures = Counter(
            "referrals_web_visit_flush_failures",
            "Visit flushes that failed (the counts are kept and written by the next one)",
            registry=registry,
        )
        self.visits_buffered = Gauge(
            "referrals_web_visits_buffered",
            "Landing visits counted in memory and not yet written",
            registry=registry,
        )
        self.visits_dropped = Counter(
            "referrals_web_visits_dropped",
            "Landing visits not counted because the buffer held too many codes",
            registry=registry,
        )
        self.ready = Gauge(
            "referrals_web_ready",
            "1 when the database answers as the read-only role",
            registry=registry,
        )

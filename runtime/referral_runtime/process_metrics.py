"""The process's own saturation signals, on a service's registry.

Each service serves its own ``CollectorRegistry``, which starts empty: without
these, ``/metrics`` would show neither the process's memory and CPU nor how
often Python's cyclic collector runs (the consumer sizes the collector's young
generation to its batches; see ``referral_consumer.main``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector


def register_process_metrics(registry: CollectorRegistry) -> None:
    """Put ``process_*`` (CPU seconds, resident memory, open fds) and ``python_gc_*`` on
    ``registry``."""
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)

"""Prometheus metrics: every series vnetd exposes, defined once.

Any layer may update these; only the service layer serves them over HTTP
(`[metrics]` in config). Names follow Prometheus conventions.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Counter("vnetd_jobs_total", "Jobs finished, by op and outcome (ok or an error code)",
               ["op", "outcome"], registry=REGISTRY)
JOB_DURATION = Histogram(
    "vnetd_job_duration_seconds", "Time from delivery to ack, by op", ["op"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY)
JOBS_DUPLICATE = Counter("vnetd_jobs_duplicate_total",
                         "Deliveries answered from the message_id cache", registry=REGISTRY)
EVENTS_PUBLISHED = Counter("vnetd_events_published_total", "Events confirmed by the broker",
                           ["type"], registry=REGISTRY)
EVENTS_DROPPED = Counter("vnetd_events_dropped_total",
                         "Events dropped because the buffer overflowed", registry=REGISTRY)
EVENTS_BUFFERED = Gauge("vnetd_events_buffered", "Events waiting to be published",
                        registry=REGISTRY)
NETLINK_OVERRUNS = Counter("vnetd_netlink_overruns_total",
                           "Netlink notifications lost (ENOBUFS) by the watcher", registry=REGISTRY)
RESYNCS = Counter("vnetd_resyncs_total", "Full state resyncs, by reason", ["reason"],
                  registry=REGISTRY)
CONNECTION_UP = Gauge("vnetd_connection_up", "1 when the dependency is connected",
                      ["dependency"], registry=REGISTRY)
OWNED_DEVICES = Gauge("vnetd_owned_devices", "Devices vnetd owns, by kind", ["kind"],
                      registry=REGISTRY)
CLEANUP_REMOVED = Counter("vnetd_cleanup_removed_total", "Orphans removed, by kind",
                          ["kind"], registry=REGISTRY)

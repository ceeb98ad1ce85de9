"""Prometheus metrics of the gateway (names per docs/metrics.md).

Defined here, in one place, so every module counts into the same registry.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LINT_FINDINGS = Counter(
    "gateway_message_lint_findings_total",
    "Lint findings on relayed messages, by code and whether the gateway fixed them.",
    ["code", "fixed"],
)
MESSAGES_REJECTED = Counter(
    "gateway_messages_rejected_total",
    "Messages refused (4xx or 5xx) at end of DATA, by reason (lint, dkim).",
    ["reason"],
)
DKIM_SIGNATURES = Counter(
    "gateway_dkim_signatures_total",
    "DKIM signatures added, by algorithm.",
    ["algorithm"],
)
DKIM_UNSIGNED = Counter(
    "gateway_dkim_unsigned_total",
    "Messages that could not be signed, by reason (no_key, sign_error) and action taken.",
    ["reason", "action"],
)
PREPARE_SECONDS = Histogram(
    "gateway_message_prepare_seconds",
    "Time to normalise, parse, lint, fix and DKIM-sign one message.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
PLUGIN_CALLS_FAILED = Counter(
    "gateway_plugin_errors_total",
    "Plugin hook calls that raised or timed out, by plugin, hook and kind (error, timeout).",
    ["plugin", "hook", "kind"],
)
POLICY_REFUSALS = Counter(
    "gateway_policy_refusals_total",
    "SMTP commands refused by a plugin's decision, by stage (connect, mail, rcpt, data) and code.",
    ["stage", "code"],
)
BOUNCE_CLASSES = Counter(
    "gateway_delivery_failures_total",
    "Failed delivery attempts by bounce class and kind (deferred, bounced, expired).",
    ["bounce_class", "kind"],
)
COMPLAINTS = Counter(
    "gateway_complaints_total",
    "Complaints (ARF reports) matched to a sent message.",
    ["sender_domain", "tenant", "source", "provider"],
)
COMPLAINT_RATE = Gauge(
    "gateway_complaint_rate",
    "Complaints / delivered over feedback.complaint_window, per sender domain or source.",
    ["kind", "name", "provider"],
)
COMPLAINT_THROTTLE = Gauge(
    "gateway_complaint_throttle",
    "Complaint throttling of a stream toward a provider: 0 normal, 1 slowed, 2 suspended.",
    ["kind", "name", "provider"],
)
FEEDBACK_REPORTS = Counter(
    "gateway_feedback_reports_total",
    "Inbound reports, by kind (bounce, complaint) and outcome (matched, unmatched, unreadable).",
    ["kind", "outcome"],
)
PLUGIN_EVENTS = Counter(
    "gateway_plugin_events_total",
    "Things plugins count (PluginContext.count), by plugin, event and kind.",
    ["plugin", "event", "kind"],
)

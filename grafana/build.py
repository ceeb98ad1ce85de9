"""Writes grafana/dashboards/*.json from the panel lists below.

    .venv/bin/python grafana/build.py

The dashboards are generated so every one has the same datasource variable,
layout and units, and so the test (tests/test_dashboards.py) and this file
agree on the expressions: it runs every `expr` in the JSON against a real
Prometheus that scraped a gateway. Edit here, run, commit both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards"
RATE = "$__rate_interval"

# (title, unit, [expr, ...]) per panel; legend from the labels a query keeps.
Panel = tuple[str, str, list[str]]


def quantile(q: float, histogram: str, by: str = "") -> str:
    keep = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({keep}) (rate({histogram}_bucket[{RATE}])))"


DASHBOARDS: dict[str, tuple[str, list[Panel]]] = {
    "overview": (
        "Gateway: overview",
        [
            (
                "Messages received / s",
                "ops",
                [f"sum(rate(gateway_messages_received_total[{RATE}]))"],
            ),
            (
                "Recipient outcomes / s",
                "ops",
                [f"sum by (outcome) (rate(gateway_recipients_total[{RATE}]))"],
            ),
            ("Messages in the queue", "short", ["gateway_queue_messages"]),
            ("Oldest message in the queue", "s", ["gateway_queue_oldest_seconds"]),
            (
                "Accept latency (p50, p95)",
                "s",
                [quantile(0.5, "gateway_accept_seconds"), quantile(0.95, "gateway_accept_seconds")],
            ),
            (
                "Refused by policy / s",
                "ops",
                [f"sum by (stage, code) (rate(gateway_policy_refusals_total[{RATE}]))"],
            ),
            ("Open connections", "short", ["sum by (direction) (gateway_connections)"]),
            ("Bytes received / s", "Bps", [f"rate(gateway_received_bytes_total[{RATE}])"]),
        ],
    ),
    "destinations": (
        "Gateway: destinations and providers",
        [
            (
                "Outcomes by provider / s",
                "ops",
                [f"sum by (provider, outcome) (rate(gateway_recipients_total[{RATE}]))"],
            ),
            (
                "Jobs waiting by queue and provider",
                "short",
                ["sum by (queue, provider) (gateway_queue_jobs)"],
            ),
            (
                "Delivery attempt time p95 by provider",
                "s",
                [quantile(0.95, "gateway_delivery_attempt_seconds", "provider")],
            ),
            (
                "Time in queue p50 by outcome",
                "s",
                [quantile(0.5, "gateway_time_in_queue_seconds", "outcome")],
            ),
            ("Suspensions in force", "short", ["sum by (scope) (gateway_holds)"]),
        ],
    ),
    "ips-warmup": (
        "Gateway: egress IPs and warm-up",
        [
            (
                "Outcomes by source / s",
                "ops",
                [f"sum by (source, outcome) (rate(gateway_recipients_total[{RATE}]))"],
            ),
            (
                "Outcomes by pool / s",
                "ops",
                [f"sum by (pool, outcome) (rate(gateway_recipients_total[{RATE}]))"],
            ),
            (
                "Warm-up: share of today's cap used",
                "percentunit",
                ['gateway_plugin_gauge{plugin="warmup", name="cap_used_ratio"}'],
            ),
            (
                "Complaint throttling (1 slowed, 2 suspended)",
                "short",
                ["gateway_complaint_throttle"],
            ),
        ],
    ),
    "bounces-complaints": (
        "Gateway: bounces and complaints",
        [
            (
                "Failures by bounce class / s",
                "ops",
                [f"sum by (bounce_class, kind) (rate(gateway_delivery_failures_total[{RATE}]))"],
            ),
            (
                "Complaints (1 h) by sender domain",
                "short",
                ["sum by (sender_domain) (increase(gateway_complaints_total[1h]))"],
            ),
            ("Complaint rate", "percentunit", ["gateway_complaint_rate"]),
            (
                "Reports coming back / s",
                "ops",
                [f"sum by (kind, outcome) (rate(gateway_feedback_reports_total[{RATE}]))"],
            ),
            (
                "Suppression hits / s",
                "ops",
                [
                    "sum by (kind) (rate(gateway_plugin_events_total"
                    f'{{plugin="suppression", event="suppression_hit"}}[{RATE}]))'
                ],
            ),
        ],
    ),
    "plugins-internals": (
        "Gateway: plugins and internals",
        [
            (
                "Plugin decisions / s",
                "ops",
                [f"sum by (plugin, hook, action) (rate(gateway_plugin_decisions_total[{RATE}]))"],
            ),
            (
                "Hook time p95",
                "s",
                [quantile(0.95, "gateway_plugin_hook_seconds", "plugin, hook")],
            ),
            (
                "Plugin errors / s",
                "ops",
                [f"sum by (plugin, hook, kind) (rate(gateway_plugin_errors_total[{RATE}]))"],
            ),
            (
                "DKIM signing time p95",
                "s",
                [quantile(0.95, "gateway_dkim_sign_seconds")],
            ),
            (
                "Unsigned messages / s",
                "ops",
                [f"sum by (reason, action) (rate(gateway_dkim_unsigned_total[{RATE}]))"],
            ),
            (
                "Lint findings / s",
                "ops",
                [f"sum by (code, fixed) (rate(gateway_message_lint_findings_total[{RATE}]))"],
            ),
            (
                "Prepare time p95",
                "s",
                [quantile(0.95, "gateway_message_prepare_seconds")],
            ),
            ("Resident memory", "bytes", ["process_resident_memory_bytes"]),
            (
                "Policy store up, fleet limits shared (1 = yes)",
                "short",
                ["gateway_policy_store_up", "gateway_fleet_limits_shared"],
            ),
        ],
    ),
}


def panel(index: int, title: str, unit: str, exprs: list[str]) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "refId": chr(ord("A") + n),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
            }
            for n, expr in enumerate(exprs)
        ],
    }


def dashboard(uid: str, title: str, panels: list[Panel]) -> dict[str, Any]:
    return {
        "uid": f"gateway-{uid}",
        "title": title,
        "tags": ["deliverability-gateway"],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                }
            ]
        },
        "panels": [panel(i, *p) for i, p in enumerate(panels)],
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for uid, (title, panels) in DASHBOARDS.items():
        text = json.dumps(dashboard(uid, title, panels), indent=2) + "\n"
        (OUT / f"{uid}.json").write_text(text)


if __name__ == "__main__":
    main()

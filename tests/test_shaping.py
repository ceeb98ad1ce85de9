"""Shaping rule files (issue 4, in progress): shipped defaults, layering,
provider matching by MX suffix, and errors that name the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.shaping import load_shaping

GMAIL_MX = ["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"]


def test_shipped_defaults_cover_the_big_providers() -> None:
    shaping = load_shaping()
    assert shaping.resolve("gmail.com", GMAIL_MX).provider == "google"
    yahoo = shaping.resolve("aol.com", ["mx-aol.mail.gm0.yahoodns.net"])
    assert (yahoo.provider, yahoo.max_messages_per_connection) == ("yahoo", 20)
    assert [a.action for a in yahoo.automation] == ["suspend"]
    outlook = shaping.resolve("hotmail.com", ["hotmail-com.olc.protection.outlook.com"])
    assert {a.action for a in outlook.automation} == {"reduce-rate", "reduce-connections"}
    assert shaping.resolve("icloud.com", ["mx01.mail.icloud.com."]).provider == "apple"
    other = shaping.resolve("example.org", ["mx.example.org"])
    assert (other.provider, other.message_rate, other.tls) == (None, "100/s", "opportunistic")


def test_operator_layers_override_values_and_add_rules(tmp_path: Path) -> None:
    mine = tmp_path / "mine.toml"
    mine.write_text(
        "[default]\n"
        'message_rate = "20/s"\n'
        "[provider.yahoo]\n"
        "max_connections = 2\n"
        "[[provider.yahoo.automation]]\n"
        "match = 'TS01'\n"
        'action = "bounce"\n'
        '[domain."gmail.com"]\n'
        'tls = "required"\n'
        "[provider.workspace-eu]\n"
        'mx_suffixes = [".eu.google.com"]\n'
        "max_connections = 1\n"
    )
    shaping = load_shaping([mine])
    yahoo = shaping.resolve("yahoo.com", ["mta7.am0.yahoodns.net"])
    assert (yahoo.max_connections, yahoo.max_messages_per_connection) == (2, 20)
    assert yahoo.message_rate == "20/s"
    assert [a.action for a in yahoo.automation] == ["suspend", "bounce"]
    gmail = shaping.resolve("gmail.com", GMAIL_MX)
    assert (gmail.tls, gmail.max_connections) == ("required", 5)
    # The longer suffix wins: a more specific provider over google.
    assert shaping.provider_of(["mx1.eu.google.com"]) == "workspace-eu"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[default]\nmessage_rate = "fast"\n', "default.message_rate"),
        ("[[provider.x.automation]]\nmatch = '('\naction = \"suspend\"\n", "not a regular expr"),
        (
            '[[provider.x.automation]]\nmatch = \'x\'\naction = "suspend"\ntrigger = "often"\n',
            "not a trigger",
        ),
        ('[[provider.x.automation]]\nmatch = "x"\naction = "explode"\n', "provider.x.automation.0"),
        ("[provider.x]\nmax_conns = 1\n", "provider.x.max_conns: unknown key"),
    ],
)
def test_bad_rule_files_name_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"bad\.toml") as caught:
        load_shaping([bad])
    assert needle in str(caught.value)


def test_automation_lowers_rate_and_connections_of_the_site(tmp_path: Path) -> None:
    """The shipped Outlook rules, driven through the delivery engine's automation:
    three 4.7.650 replies halve the site's rate; one 4.7.652 halves its connections.
    (Step-by-step recovery is covered by the Rust AdaptiveLimit tests.)"""
    from gateway.config import Config
    from gateway.delivery.engine import DeliveryEngine
    from gateway.delivery.resolver import MxHost, MxResolver
    from gateway.spool import Spool

    config = Config()
    engine = DeliveryEngine(config, Spool(tmp_path), MxResolver(config.dns))
    hosts = [MxHost("hotmail-com.olc.protection.outlook.com", 10, ("127.0.0.1",))]
    engine._enqueue("hotmail.com", hosts, [])
    site = "hotmail-com.olc.protection.outlook.com"
    assert engine._limiter("", site) is engine._limiter("", site)
    reply = "451 4.7.650 The mail server has been temporarily rate limited (S775)"
    assert [engine._automate(site, reply) for _ in range(3)] == [None, None, "reduce-rate"]
    engine._limiter("", site)
    assert engine._limiters[("", site)][0] == 0.5
    assert engine._automate(site, "451 4.7.652 exceeded the maximum number of connections")
    assert engine._connection_factor[site].value(0.0) == 0.5
    assert engine._automate(site, "250 2.0.0 OK") is None

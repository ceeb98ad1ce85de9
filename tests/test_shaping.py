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


def test_automation_lowers_rate_and_connections_and_recovers_step_by_step() -> None:
    """The shipped Outlook rules through ReplyAutomation, on a controlled clock:
    three 4.7.650 replies halve the rate of the source that got them (not of
    the site), one 4.7.652 halves the site's connections, and after each clean
    period a quarter of the configured value comes back."""
    from gateway.delivery.automation import ReplyAutomation, ReplyContext
    from gateway.delivery.holds import Holds

    rules = load_shaping().resolve("hotmail.com", ["hotmail-com.olc.protection.outlook.com"])
    site = "hotmail-com.olc.protection.outlook.com"
    auto = ReplyAutomation(Holds())
    ctx = ReplyContext(site, "ip1")
    reply = "451 4.7.650 The mail server has been temporarily rate limited (S775)"
    t0 = 1_000_000.0
    assert [auto.on_reply(rules, ctx, reply, t0) for _ in range(3)] == [
        None,
        None,
        "reduce-rate",
    ]
    assert auto.lane_rate_factor({"site": site, "source": "ip1"}, t0) == 0.5
    assert (
        auto.lane_rate_factor({"site": site, "source": "ip2"}, t0) == 1.0
    )  # another IP keeps its rate
    assert auto.on_reply(rules, ctx, "451 4.7.652 exceeded the maximum connections", t0)
    assert auto.lane_connection_factor({"site": site, "source": "ip2"}, t0) == 0.5  # site-wide
    assert auto.on_reply(rules, ctx, "250 2.0.0 OK", t0) is None
    hour = 3600.0  # the 4.7.652 rule's duration: its clean period
    assert [
        auto.lane_connection_factor({"site": site, "source": "ip1"}, t0 + k * hour)
        for k in (0.5, 1, 2)
    ] == [
        0.5,
        0.75,
        1.0,
    ]


def test_automation_scoped_to_tenant_and_campaign(tmp_path: Path) -> None:
    from gateway.delivery.automation import ReplyAutomation, ReplyContext
    from gateway.delivery.holds import Holds

    (tmp_path / "rules.toml").write_text(
        '[[default.automation]]\nmatch = "5\\\\.7\\\\.1"\naction = "suspend"\n'
        'scope = "tenant"\nduration = "10m"\n'
        '[[default.automation]]\nmatch = "4\\\\.2\\\\.2"\naction = "reduce-rate"\n'
        'scope = "campaign"\nfactor = 0.25\n'
    )
    rules = load_shaping([tmp_path / "rules.toml"]).resolve("x.test", ["mx.x.test"])
    holds = Holds()
    auto = ReplyAutomation(holds)
    now = 5000.0
    # No tenant label: a tenant-scoped rule has nothing to act on.
    assert auto.on_reply(rules, ReplyContext("mx.x.test", "a"), "550 5.7.1 no", now) is None
    ctx = ReplyContext("mx.x.test", "a", tenant="shop", campaign="nov")
    assert auto.on_reply(rules, ctx, "550 5.7.1 policy", now) == "suspend"
    hold = holds.find(now, site="mx.x.test", tenant="shop")
    assert hold is not None
    assert hold.until == now + 600
    assert holds.find(now, site="mx.x.test", tenant="other") is None
    assert holds.find(now, site="mx.x.test") is None  # the site is not held
    assert auto.on_reply(rules, ctx, "452 4.2.2 mailbox full", now) == "reduce-rate"
    tenant, campaign = auto.label_rate_factors(
        {"site": "mx.x.test", "tenant": "shop", "campaign": "nov"}
    )
    assert campaign.campaign == "nov"
    assert auto.rate_factors[campaign].value(now) == 0.25
    # The tenant's suspension ends gradually: at half its rate when it lifts.
    assert tenant.tenant == "shop"
    assert auto.rate_factors[tenant].value(now + 600) == 0.5


def test_reduce_connections_cannot_target_a_tenant(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[[default.automation]]\nmatch = "x"\naction = "reduce-connections"\nscope = "tenant"\n'
    )
    with pytest.raises(ConfigError, match="acts on a site or source"):
        load_shaping([path])


def test_site_timeouts_name_the_same_timeouts_as_the_delivery_section() -> None:
    from gateway.config import DeliveryTimeouts
    from gateway.shaping import TimeoutOverrides

    assert set(TimeoutOverrides.model_fields) == set(DeliveryTimeouts.model_fields)

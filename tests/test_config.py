"""Configuration: embedded defaults are safe; bad files name the key and why."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.config import Config, ConfigError, load_config, parse_duration


def test_defaults_are_loopback_only_and_run() -> None:
    config = load_config(None)
    assert config.smtp.listen == ["127.0.0.1:2525"]
    assert config.smtp.relay_networks == ["127.0.0.0/8", "::1/128"]
    assert config.retry.max_age == 5 * 86400
    assert config.spool_dir == Path("data/spool")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("2h", 7200), ("5d", 432000), (12, 12)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[smtp]\nlisten_on = 1\n", "smtp.listen_on: unknown key"),
        ('[smtp]\nrelay_networks = ["0.0.0.0/0"]\n', "open relay"),
        ('[retry]\nmax_age = "forever"\n', "retry.max_age"),
        ("[delivery]\nport = 70000\n", "delivery.port"),
        ("[smtp\n", "not valid TOML"),
        ('[message]\nreject = ["from-missing"]\n', "unknown lint code 'from-missing'"),
        ('[dkim]\non_failure = "ignore"\n', "dkim.on_failure"),
        ('[[dkim.keys]]\ndomain = "a.test"\n', "dkim.keys.0.selector: Field required"),
        (
            '[[egress.pools]]\nname = "p"\nsources = {x = 1}\n',
            "pool 'p' names unknown source 'x'",
        ),
        ('[[egress.sources]]\nname = "a"\naddress = "not-an-ip"\n', "egress.sources.0.address"),
    ],
)
def test_bad_config_names_key(tmp_path: Path, toml: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_config(path)


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[node]\nhostname = "relay.example.com"\n[retry]\nfirst_interval = "1m"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text("[delivery]\nmax_connections = 0\n")
    run = [sys.executable, "-m", "gateway", "check-config"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    fail = subprocess.run([*run, str(bad)], capture_output=True, text=True, check=False)
    assert fail.returncode == 2
    assert "delivery.max_connections" in fail.stderr


def test_documented_keys_match_the_model() -> None:
    """docs/configuration.md documents every key the model accepts."""
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    missing = []
    for section, field in Config.model_fields.items():
        model = field.annotation
        assert model is not None
        if not hasattr(model, "model_fields"):  # [plugin.NAME] tables, [[webhooks]] lists
            if f"[{section}." not in doc and f"[[{section}]]" not in doc:
                missing.append(section)
            continue
        for key, sub in model.model_fields.items():
            if hasattr(sub.annotation, "model_fields"):
                for leaf in sub.annotation.model_fields:
                    if f"`{leaf}`" not in doc:
                        missing.append(f"{section}.{key}.{leaf}")
            elif f"`{key}`" not in doc:
                missing.append(f"{section}.{key}")
    assert missing == []


def test_dkim_records_cli(tmp_path: Path) -> None:
    from gateway.testing.dkim import public_record, write_key

    key = write_key(tmp_path / "k.pem", "rsa2048")
    conf = tmp_path / "g.toml"
    conf.write_text(f'[[dkim.keys]]\ndomain = "a.test"\nselector = "s1"\nkey_file = "{key}"\n')
    run = [sys.executable, "-m", "gateway", "dkim-records", "--config", str(conf)]
    out = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert out.startswith("s1._domainkey.a.test. IN TXT (")
    assert "".join(re.findall(r'"([^"]*)"', out)) == public_record(key)


def test_documented_example_is_valid() -> None:
    """The example at the end of docs/configuration.md loads as it is."""
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    example = doc.split("## Example", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    config = Config.model_validate(tomllib.loads(example))
    assert config.egress.default_pool == "main"
    assert [k.selector for k in config.dkim.keys] == ["s2026", "esp1"]

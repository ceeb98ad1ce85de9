"""Typed configuration: one TOML file, validated at start, errors that name the key.

Every key and its default is documented in docs/configuration.md; keep the two in step.
No file means the embedded defaults, which run a safe single node on loopback.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
import tempfile
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway._core import DEFAULT_SIGNED_HEADERS, LINT_CODES, parse_rate

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as "30s", "5m", "2h", "5d"."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '5m', '5d'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"not a duration: {value!r} (use e.g. '30s', '5m', '2h', '5d')")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_hostport(value: str, default_port: int) -> tuple[str, int]:
    """'127.0.0.1:2525', '[::1]:2525' or a bare host."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    if not host:
        raise ValueError(f"no host in {value!r}")
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"bad port in {value!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, number


def _default_signed_headers() -> list[str]:
    return list(DEFAULT_SIGNED_HEADERS)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(_Section):
    hostname: str = Field(default_factory=socket.getfqdn)
    data_dir: Path = Path("data")
    # SMTP ingress in this many worker processes sharing the listening
    # addresses (0: in the main process, which also delivers). See
    # docs/architecture.md, "Processes".
    ingress_processes: int = Field(default=0, ge=0, le=64)
    # The event loop of every process: "uvloop" (libuv; measured faster) or
    # Python's own "asyncio" (for debugging, or where uvloop cannot be had).
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"


# Mozilla's "intermediate" TLS 1.2 suites (forward secrecy, AEAD only); TLS 1.3
# suites are always on. Senders' MTAs are old more often than browsers are.
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


class SmtpTlsConfig(_Section):
    """The certificate the SMTP listeners offer (STARTTLS, and implicit TLS on
    `submissions_listen`), re-read on SIGHUP."""

    certificate: Path | None = None  # PEM, the chain after the leaf
    key: Path | None = None  # PEM private key
    # Refuse MAIL before STARTTLS on the plain listeners (530 5.7.0).
    required: bool = False
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    ciphers: str = MODERN_CIPHERS

    @model_validator(mode="after")
    def _pair(self) -> SmtpTlsConfig:
        if (self.certificate is None) != (self.key is None):
            raise ValueError("certificate and key go together")
        if self.required and self.certificate is None:
            raise ValueError("required = true needs a certificate and key")
        return self

    @property
    def enabled(self) -> bool:
        return self.certificate is not None


class SmtpAuthConfig(_Section):
    """SMTP AUTH (PLAIN, LOGIN), offered only over TLS."""

    # Lines "user:argon2-hash[:tenant[:stream]]"; `gateway passwd USER` makes
    # them. Re-read on SIGHUP. Plugins can check credentials too (smtp_auth).
    users_file: Path | None = None
    # Clients in relay_networks must authenticate too.
    required: bool = False
    # A client IP with this many failed logins within `failure_window` is
    # refused (421 4.7.0) until the window has passed since its last failure.
    max_failures: int = Field(default=5, ge=1)
    failure_window: Duration = 900.0
    # A login that passed is not hashed again for this long (argon2 costs
    # ~100 ms of CPU; applications open a connection per message).
    cache_seconds: Duration = 300.0


class SmtpConfig(_Section):
    listen: list[str] = ["127.0.0.1:2525"]
    # Implicit TLS listeners (RFC 8314 submissions, usually port 465).
    submissions_listen: list[str] = []
    max_message_size: int = Field(default=36_700_160, ge=1024)
    max_recipients: int = Field(default=1000, ge=1)
    relay_networks: list[str] = ["127.0.0.0/8", "::1/128"]
    # Idle time allowed between commands, and for the whole DATA transfer.
    timeout: Duration = 300.0
    banner: str = "Deliverability Gateway ESMTP"
    # Abuse limits: open sessions in all and per client IP (more get 421 4.7.0
    # before the greeting), commands per second per session (sustained, with a
    # burst of `max_recipients` so a pipelined transaction passes), error
    # replies per session, and how long one session may last.
    max_connections: int = Field(default=2000, ge=1)
    max_connections_per_ip: int = Field(default=200, ge=1)
    command_rate: float = Field(default=500.0, gt=0)
    max_errors: int = Field(default=20, ge=1)
    max_session_time: Duration = 3600.0
    # MAIL gets 452 4.3.1 while the spool's filesystem has less free than this
    # plus the message's declared SIZE (Postfix's queue_minfree).
    min_free_space: int = Field(default=100 * 1024 * 1024, ge=0)
    tls: SmtpTlsConfig = SmtpTlsConfig()
    auth: SmtpAuthConfig = SmtpAuthConfig()

    @field_validator("listen", "submissions_listen")
    @classmethod
    def _listen(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value and info.field_name == "listen":
            raise ValueError("at least one listen address is needed")
        for item in value:
            parse_hostport(item, 2525)
        return value

    @model_validator(mode="after")
    def _tls_for_submissions(self) -> SmtpConfig:
        if self.submissions_listen and not self.tls.enabled:
            raise ValueError("submissions_listen needs [smtp.tls] certificate and key")
        return self

    @field_validator("relay_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                net = ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not a network: {exc}") from None
            if net.prefixlen == 0:
                raise ValueError(f"{item!r} would make the gateway an open relay")
        return value

    def listen_addresses(self) -> list[tuple[str, int]]:
        return [parse_hostport(item, 2525) for item in self.listen]

    def submissions_addresses(self) -> list[tuple[str, int]]:
        return [parse_hostport(item, 465) for item in self.submissions_listen]


class DeliveryTimeouts(_Section):
    """RFC 5321 §4.5.3.2 minimums, plus connect."""

    connect: Duration = 30.0
    greeting: Duration = 300.0
    ehlo: Duration = 300.0
    starttls: Duration = 60.0
    mail: Duration = 300.0
    rcpt: Duration = 300.0
    data_init: Duration = 120.0
    data_block: Duration = 180.0
    data_done: Duration = 600.0


class DeliveryConfig(_Section):
    port: int = Field(default=25, ge=1, le=65535)
    helo_name: str = ""
    max_connections: int = Field(default=200, ge=1)
    max_connections_per_destination: int = Field(default=10, ge=1)
    max_messages_per_connection: int = Field(default=100, ge=1)
    # An idle connection waits this long for more mail to its site before QUIT.
    idle_timeout: Duration = 1.0
    starttls: Literal["opportunistic", "disabled"] = "opportunistic"
    # A message's data end goes in one write with the next message's commands.
    pipeline_data_end: bool = True
    # CA certificates (PEM) that MX and MTA-STS policy hosts' certificates are
    # checked against where a policy demands it; absent: the system's.
    ca_file: Path | None = None
    shaping_files: list[Path] = []
    # With the Redis store: a source's limits toward a site (`message_rate`,
    # `max_connections`) are held with every node sending from the same address.
    share_lane_limits: bool = True
    timeouts: DeliveryTimeouts = DeliveryTimeouts()


class EgressSource(_Section):
    """A local address outbound connections bind to, and the name it says in EHLO."""

    name: str
    address: str
    ehlo: str = ""
    # This source's own ceiling across all destinations (e.g. "50000/h"), on top
    # of per-site shaping and any caps plugins set (warm-up).
    message_rate: str | None = None

    @field_validator("message_rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value


class EgressPool(_Section):
    """A weighted set of sources."""

    name: str
    sources: dict[str, int]

    @field_validator("sources")
    @classmethod
    def _weights(cls, value: dict[str, int]) -> dict[str, int]:
        if not value:
            raise ValueError("a pool needs at least one source")
        for source, weight in value.items():
            if weight < 1:
                raise ValueError(f"weight of {source!r} must be at least 1")
        return value


class EgressConfig(_Section):
    sources: list[EgressSource] = []
    pools: list[EgressPool] = []
    default_pool: str = ""

    @model_validator(mode="after")
    def _references(self) -> EgressConfig:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError("egress source names must be unique")
        pools = {p.name for p in self.pools}
        if len(pools) != len(self.pools):
            raise ValueError("egress pool names must be unique")
        for pool in self.pools:
            for source in pool.sources:
                if source not in names:
                    raise ValueError(f"pool {pool.name!r} names unknown source {source!r}")
        if self.default_pool and self.default_pool not in pools:
            raise ValueError(f"default_pool {self.default_pool!r} is not a pool")
        return self


class DnsConfig(_Section):
    nameservers: list[str] = []
    port: int = Field(default=53, ge=1, le=65535)
    timeout: Duration = 10.0

    @field_validator("nameservers")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_address(item)
        return value


class RetryConfig(_Section):
    first_interval: Duration = 300.0
    multiplier: float = Field(default=2.0, ge=1.0)
    max_interval: Duration = 7200.0
    jitter: float = Field(default=0.1, ge=0.0, le=0.5)
    max_age: Duration = 5 * 86400.0


class MessageConfig(_Section):
    """Lint and fix-up of every relayed message, before it is signed."""

    add_message_id: bool = True
    add_date: bool = True
    reject: list[str] = ["missing-from", "multiple-from"]

    @field_validator("reject")
    @classmethod
    def _codes(cls, value: list[str]) -> list[str]:
        for code in value:
            if code not in LINT_CODES:
                raise ValueError(f"unknown lint code {code!r}; known: {', '.join(LINT_CODES)}")
        return value


class DkimKeyConfig(_Section):
    """One private key: it signs as d=domain s=selector."""

    domain: str
    selector: str
    key_file: Path
    headers: list[str] | None = None


class DkimConfig(_Section):
    keys: list[DkimKeyConfig] = []
    headers: list[str] = Field(default_factory=_default_signed_headers)
    header_canonicalization: Literal["relaxed", "simple"] = "relaxed"
    body_canonicalization: Literal["relaxed", "simple"] = "relaxed"
    expiration: Duration = 0.0
    sign_author_domain: bool = True
    domain_map: dict[str, str] = {}
    also_sign: list[str] = []
    on_failure: Literal["relay", "defer", "reject"] = "relay"
    threads: int = Field(default=0, ge=0)
    reload_interval: Duration = 10.0

    @field_validator("domain_map")
    @classmethod
    def _lowercase_map(cls, value: dict[str, str]) -> dict[str, str]:
        return {k.lower().rstrip("."): v.lower().rstrip(".") for k, v in value.items()}

    @field_validator("also_sign")
    @classmethod
    def _lowercase(cls, value: list[str]) -> list[str]:
        return [v.lower().rstrip(".") for v in value]


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class FeedbackConfig(_Section):
    """Where bounces and complaints come back, and what they do."""

    # Mail to this domain is accepted from anyone (it is ours, not relaying)
    # and read as bounces: e.g. "bounces.example.com", with its MX pointing here.
    bounce_domain: str = ""
    # Addresses whose mail is read as ARF complaint reports (feedback loops).
    fbl_addresses: list[str] = []
    # Envelope sender per recipient b+TOKEN@bounce_domain (needs bounce_domain).
    verp: bool = False
    # HMAC key of VERP tokens and X-Gateway-Id headers; "" derives one from the host.
    secret: str = ""
    # How long sent messages are remembered for matching late bounces and complaints.
    remember: Duration = 30 * 86400.0
    # Complaint-rate throttling, per sender domain and per source IP, toward a provider.
    complaint_window: Duration = 86400.0
    complaint_warn: float = Field(default=0.001, ge=0.0, le=1.0)
    complaint_limit: float = Field(default=0.003, ge=0.0, le=1.0)
    complaint_min_delivered: int = Field(default=1000, ge=1)
    # How much a stream past the warning threshold is slowed (its rate times this).
    complaint_slow_factor: float = Field(default=0.5, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _verp_needs_domain(self) -> FeedbackConfig:
        if self.verp and not self.bounce_domain:
            raise ValueError("verp needs bounce_domain")
        return self


class AccountingConfig(_Section):
    """The accounting log (docs/accounting.md)."""

    enabled: bool = True
    directory: Path | None = None  # default: <node.data_dir>/accounting
    rotate_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    rotate_interval: Duration = 86400.0
    keep: int = Field(default=30, ge=1)  # rotated files kept


class WebhookConfig(_Section):
    """One URL that receives signed batches of events (docs/webhooks.md)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    url: str = Field(pattern=r"^https?://")
    secret: str = Field(min_length=16)
    events: list[Literal["delivered", "deferred", "bounced", "complaint", "unsubscribe"]] = [
        "bounced",
        "complaint",
        "unsubscribe",
    ]
    batch_size: int = Field(default=100, ge=1, le=10_000)
    timeout: Duration = 10.0
    # Past this many waiting events the oldest are dropped (logged, counted),
    # so an endpoint gone for days cannot fill the disk.
    max_backlog: int = Field(default=1_000_000, ge=10)


class PluginsConfig(_Section):
    """Which plugins run, in what order, and how long one may take."""

    # Plugin names (entry points of the group "gateway") to run; empty: every
    # one installed. `disabled` wins over `enabled`.
    enabled: list[str] = []
    disabled: list[str] = []
    # These run first, in this order; the others after them, by name.
    order: list[str] = []
    # An async hook implementation that takes longer is abandoned: a 4xx for
    # SMTP decisions, a logged error elsewhere.
    timeout: Duration = 30.0
    timeouts: dict[str, Duration] = {}  # per plugin name, over `timeout`


class StoreConfig(_Section):
    """Policy state (suppressions, consent, warm-up progress)."""

    # "sqlite": embedded, one node. "redis": shared by a fleet (docs/clustering.md).
    backend: Literal["sqlite", "redis"] = "sqlite"
    path: Path | None = None  # sqlite; default: <node.data_dir>/policy.sqlite3
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "gateway"  # key prefix, so fleets can share a Redis

    @property
    def shared(self) -> bool:
        """Whether other nodes share this store (a fleet)."""
        return self.backend == "redis"


class HttpConfig(_Section):
    """The public HTTP listener: endpoints recipients reach (one-click unsubscribe)."""

    listen: str = "127.0.0.1:8025"  # "" turns it off
    public_url: str = ""  # how recipients reach it, e.g. "https://unsub.example.com"


class AdminConfig(_Section):
    """The admin listener: the admin API, /metrics, private plugin endpoints."""

    listen: str = "127.0.0.1:8026"  # "" turns it off
    # The bearer token; "" reads token_file, or creates it with a random token.
    token: str = ""
    token_file: Path | None = None  # default: <node.data_dir>/admin.token
    metrics_need_token: bool = False  # Prometheus may scrape /metrics without one


class MtaStsConfig(_Section):
    """MTA-STS (RFC 8461) policies of recipient domains (docs/security.md)."""

    enabled: bool = True
    # How often a domain's _mta-sts TXT record is read again for a new policy id.
    recheck: Duration = 3600.0
    fetch_timeout: Duration = 10.0
    port: int = Field(default=443, ge=1, le=65535)  # of policy hosts; only tests change it


class Config(_Section):
    node: NodeConfig = NodeConfig()
    smtp: SmtpConfig = SmtpConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    mta_sts: MtaStsConfig = MtaStsConfig()
    egress: EgressConfig = EgressConfig()
    dns: DnsConfig = DnsConfig()
    retry: RetryConfig = RetryConfig()
    message: MessageConfig = MessageConfig()
    dkim: DkimConfig = DkimConfig()
    log: LogConfig = LogConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    accounting: AccountingConfig = AccountingConfig()
    webhooks: list[WebhookConfig] = []
    plugins: PluginsConfig = PluginsConfig()
    # One table per plugin, checked against the plugin's own Settings model.
    plugin: dict[str, dict[str, Any]] = {}
    store: StoreConfig = StoreConfig()
    http: HttpConfig = HttpConfig()
    admin: AdminConfig = AdminConfig()

    @property
    def admin_token_file(self) -> Path:
        return self.admin.token_file or self.node.data_dir / "admin.token"

    @property
    def store_path(self) -> Path:
        return self.store.path or self.node.data_dir / "policy.sqlite3"

    @property
    def store_settings(self) -> StoreConfig:
        """[store] with the SQLite path filled in: what open_store() takes."""
        return self.store.model_copy(update={"path": self.store_path})

    @property
    def helo_name(self) -> str:
        return self.delivery.helo_name or self.node.hostname

    @property
    def ingress_socket(self) -> Path:
        """Where ingress workers reach the queue manager: in the data directory,
        or, when that path is too long for a Unix socket (108 bytes), in a
        private directory under /tmp named after it."""
        path = self.node.data_dir.absolute() / "ingress.sock"
        if len(str(path)) < 100:
            return path
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"gateway-{digest}" / "ingress.sock"

    @property
    def spool_dir(self) -> Path:
        return self.node.data_dir / "spool"


class ConfigError(Exception):
    """A configuration problem, with the dotted key and the reason."""


def describe_errors(exc: ValidationError, prefix: str = "") -> str:
    """One line per validation error: the dotted key (after `prefix`), then what is wrong."""
    lines = []
    for err in exc.errors():
        key = prefix + ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{key}: {msg}")
    return "\n".join(lines)


_M = TypeVar("_M", bound=BaseModel)


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError naming the file when it cannot be read or parsed."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def validate_file(model: type[_M], raw: dict[str, Any], path: Path) -> _M:
    """`raw` (read from `path`) as `model`; ConfigError naming the file and each bad key."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}:\n{describe_errors(exc)}") from None


def load_config(path: Path | str | None) -> Config:
    """The embedded defaults, or the file at `path` validated over them."""
    if path is None:
        return Config()
    path = Path(path)
    return validate_file(Config, read_toml(path), path)

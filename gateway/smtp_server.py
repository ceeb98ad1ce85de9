"""The SMTP protocol side of ingress (aiosmtpd): enhanced status codes,
RFC-correct edge replies, abuse limits, TLS and asynchronous AUTH.

What a transaction may do (relay control, plugins, queueing) is decided by
the session policy, `gateway.ingress.IngressHandler`; this module only runs
sessions and keeps them within bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, AnyStr, Protocol, cast

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session
from aiosmtpd.smtp import log as aiosmtpd_log  # the replies GatewaySMTP.push would log

from gateway import aiosmtpd_patches
from gateway.auth import Authenticator, AuthUnavailable
from gateway.config import Config
from gateway.log import event
from gateway.metrics import AUTH_ATTEMPTS, SESSIONS_REFUSED
from gateway.plugin import Login, SessionInfo
from gateway.smtp_data import read_data

aiosmtpd_patches.install()

# Bytes a session's stream reader buffers before it stops reading the socket.
# aiosmtpd sets it to the line length limit (1001), so a 2 KB message made the
# transport stop and restart reading (two epoll_ctl calls) on every DATA. Line
# lengths are still checked against line_length_limit: commands by aiosmtpd,
# DATA by gateway/smtp_data.py.
READ_BUFFER = 64 * 1024

_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}\b")
# Enhanced status codes (RFC 2034/3463) for aiosmtpd's own replies that lack one.
_DEFAULT_ENHANCED = {
    250: "2.0.0",
    221: "2.0.0",
    251: "2.1.5",
    252: "2.0.0",
    421: "4.3.0",
    451: "4.3.0",
    452: "4.5.3",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.5.0",
    555: "5.5.4",
}


# `<local@domain>` and what follows (ESMTP parameters): plain atoms only; quoted
# local parts, comments, routes and the like go to aiosmtpd's full parser.
_SIMPLE_ADDRESS = re.compile(
    r"\s*<(([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+)@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)>(.*)\Z",
    re.DOTALL,
)


class SessionHooks:
    """The policy's aiosmtpd hooks (`handle_*`) and nothing else: aiosmtpd
    inspects every member of its handler for each new connection, so the
    handler it gets is kept this small (one per listener)."""

    def __init__(self, policy: object) -> None:
        names = [name for name in dir(type(policy)) if name.startswith("handle_")]
        for name in names:
            setattr(self, name, getattr(policy, name))
        self.aiosmtpd_names = tuple(names)  # what aiosmtpd's dir() sees of it


class SessionPolicy(Protocol):
    """What sessions ask of the ingress handler beyond aiosmtpd's handle_* hooks."""

    auth: Authenticator
    in_data: int

    async def on_connect(self, session: Session) -> str | None: ...


class GatewayEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.rejected_rcpts = 0
        self.feedback: bool | None = None  # a transaction of reports to us, once known


@dataclass(frozen=True)
class SessionLimits:
    """Abuse limits applied by every session (from [smtp])."""

    max_connections: int
    max_connections_per_ip: int
    command_rate: float  # commands per second, sustained
    command_burst: float  # commands in a burst (a pipelined transaction)
    max_errors: int
    max_session_time: float

    @classmethod
    def from_config(cls, config: Config) -> SessionLimits:
        smtp = config.smtp
        return cls(
            smtp.max_connections,
            smtp.max_connections_per_ip,
            smtp.command_rate,
            float(smtp.max_recipients + 20),
            smtp.max_errors,
            smtp.max_session_time,
        )


# aiosmtpd calls its authenticator synchronously; ours is async (a password
# hash is checked in a thread), so _authenticate hands the credentials back
# marked with this and auth_PLAIN/auth_LOGIN finish the check.
_PENDING = "pending"


class _RateChecked(dict[str, Any]):
    """aiosmtpd's command table (name: bound `smtp_*` method), bound as aiosmtpd
    looks a command up (`get`) and wrapped by the rate check: a session sends a
    handful of the twenty commands, so binding and wrapping them all per
    connection was wasted. Holds the class's functions; `items` binds them
    all (HELP lists them)."""

    def __init__(
        self, server: SMTP, functions: dict[str, Any], check: Callable[[Any], Any]
    ) -> None:
        super().__init__(functions)
        self._server = server
        self._check = check

    def get(self, name: str, default: Any = None) -> Any:
        function = super().get(name)
        return default if function is None else self._check(function.__get__(self._server))

    def items(self) -> Any:
        return [(name, f.__get__(self._server)) for name, f in super().items()]


_commands: dict[type, dict[str, Any]] = {}


def _command_functions(cls: type) -> dict[str, Any]:
    """The `smtp_*` functions of a server class by command name (remembered)."""
    found = _commands.get(cls)
    if found is None:
        names = [n for n in dir(cls) if n.startswith("smtp_")]
        found = _commands[cls] = {n.removeprefix("smtp_"): getattr(cls, n) for n in names}
    return found


class GatewaySMTP(SMTP):
    """aiosmtpd's server with enhanced status codes, RFC-correct edge replies,
    abuse limits and asynchronous AUTH."""

    sessions: set[GatewaySMTP] = set()
    per_ip: Counter[str] = Counter()
    # What aiosmtpd's dir() sees of a session (gateway/aiosmtpd_patches.py):
    # nothing, so it binds no command per connection; _RateChecked binds on use.
    aiosmtpd_names: tuple[str, ...] = ()

    def __init__(
        self,
        policy: SessionPolicy,
        *,
        limits: SessionLimits,
        implicit_tls: bool = False,
        hooks: SessionHooks | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(hooks or SessionHooks(policy), **kwargs)
        reader = getattr(self, "_stream_reader", None)  # asyncio's StreamReaderProtocol
        if reader is not None and hasattr(reader, "_limit"):
            reader._limit = READ_BUFFER
        self.policy = policy
        self._plain_replies = False
        self._continued: list[bytes] = []  # a multi-line reply's lines so far
        self._limits = limits
        self._implicit_tls = implicit_tls
        self._ip = ""
        self._errors = 0
        self._tokens = limits.command_burst
        self._refilled = time.monotonic()
        self._deadline: asyncio.TimerHandle | None = None
        self._idle_until = 0.0  # the idle timeout's deadline (loop time)
        self._idle_armed = 0.0  # when its timer fires
        self._lost = False  # connection_lost has run
        # Every command passes the rate check first.
        self._smtp_methods = _RateChecked(self, _command_functions(type(self)), self._rate_checked)

    def _create_envelope(self) -> GatewayEnvelope:
        return GatewayEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # not the STARTTLS switch
        super().connection_made(transport)
        if not first:
            return
        GatewaySMTP.sessions.add(self)
        if self._handler_coroutine is not None:
            self._handler_coroutine.add_done_callback(self._handler_done)
        peer = transport.get_extra_info("peername")
        self._ip = str(peer[0]) if isinstance(peer, tuple) else ""
        GatewaySMTP.per_ip[self._ip] += 1
        self._deadline = self.loop.call_later(self._limits.max_session_time, self._too_long)
        if self._implicit_tls and self.session is not None:
            # aiosmtpd knows of TLS only through STARTTLS (`_tls_protocol`,
            # only tested for truth after the switch); on an implicit-TLS
            # listener the transport is encrypted from the start. asyncio's
            # TLS transport has its protocol; uvloop's has none to give.
            marker = getattr(transport, "_ssl_protocol", None) or transport
            self._tls_protocol = marker  # type: ignore[assignment]
            self.session.ssl = {"implicit": True}

    def connection_lost(self, error: Exception | None) -> None:
        if self in GatewaySMTP.sessions:
            GatewaySMTP.sessions.discard(self)
            GatewaySMTP.per_ip[self._ip] -= 1
            if GatewaySMTP.per_ip[self._ip] <= 0:
                del GatewaySMTP.per_ip[self._ip]
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(error)
        self._lost = True
        if self._handler_coroutine is None or self._handler_coroutine.done():
            self._release()  # else once the task ends (_handler_done)

    def _handler_done(self, _task: object) -> None:
        if self._lost:
            self._release()

    def _release(self) -> None:
        """Once the connection is gone and its handler task has ended, drop
        what refers back to this object: the task (its CancelledError holds
        the frames), the bound command table, AUTH methods and connected
        callback, the timers, the stream writer. Reference counting then frees
        the session at once; left in cycles, its ~45 objects were the cyclic
        collector's work (about 1% of the gateway's CPU per message, measured
        side by side: BENCHMARKS.md, ninth round of issue 9)."""
        self._handler_coroutine = None
        self._smtp_methods = {}
        self._auth_methods = {}
        self._timeout_handle = None
        self._deadline = None
        self._writer = None  # type: ignore[assignment]
        self._reader = None  # type: ignore[assignment]
        self._client_connected_cb = None  # aiosmtpd's own bound method

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd makes a timer and cancels the last for every command line;
        # here the deadline moves on and one timer, firing before it, waits
        # again: a float stored per command.
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self._idle_until = deadline
        if self._timeout_handle is None or deadline < self._idle_armed:
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        self._idle_armed = self._idle_until
        self._timeout_handle = self.loop.call_at(self._idle_until, self._idle_timer_fired)

    def _idle_timer_fired(self) -> None:
        if self.loop.time() < self._idle_until:
            self._arm_idle_timer()  # there was activity since it was armed
        else:
            self._refuse_now("idle", "421 4.4.2 Idle too long; closing")

    def _refuse_now(self, limit: str, reply: str) -> None:
        SESSIONS_REFUSED.labels(limit).inc()
        event("session_limit", logging.WARNING, client=self._ip, limit=limit)
        # Duck-typed: uvloop's transports are not asyncio.WriteTransport subclasses.
        transport = cast(asyncio.WriteTransport | None, self.transport)
        if transport is not None and not transport.is_closing():
            transport.write(f"{reply}\r\n".encode())
            transport.close()

    def _too_long(self) -> None:
        self._refuse_now("session_time", "421 4.4.2 Session too long; closing")

    def _over_connection_limits(self) -> str | None:
        if len(GatewaySMTP.sessions) > self._limits.max_connections:
            return "connections"
        if GatewaySMTP.per_ip[self._ip] > self._limits.max_connections_per_ip:
            return "connections_per_ip"
        return None

    def _rate_checked(self, method: Callable[[str | None], Awaitable[None]]) -> Any:
        async def checked(arg: str | None) -> None:
            now = time.monotonic()
            limits = self._limits
            self._tokens = min(
                limits.command_burst, self._tokens + (now - self._refilled) * limits.command_rate
            )
            self._refilled = now
            if self._tokens < 1:
                self._refuse_now("command_rate", "421 4.7.0 Too many commands; slow down")
                return
            self._tokens -= 1
            await method(arg)

        # The command's attributes (aiosmtpd's @syntax: HELP reads them) are the
        # wrapper's too: one shared dict, not a copy per command.
        checked.__dict__ = getattr(method, "__func__", method).__dict__
        return checked

    @property
    def in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    async def _handle_client(self) -> None:
        limit = self._over_connection_limits()
        if limit:
            self._refuse_now(limit, "421 4.7.0 Too many connections; try again later")
            return
        # smtp_connect plugins decide before the greeting.
        if self.session is not None:
            refusal = await self.policy.on_connect(self.session)
            if refusal:
                await self.push(refusal)
                if self.transport is not None:
                    self.transport.close()
                return
        await super()._handle_client()

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and not self._plain_replies:
            status = _with_enhanced_code(status)
        # aiosmtpd's encoding, done here to hold the bytes.
        line = (
            status
            if isinstance(status, bytes)
            else status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        )
        if line[3:4] == b"-":
            # A multi-line reply (EHLO's capabilities) goes out in one write
            # with its last line, not a write and a client wakeup per line.
            self._continued.append(line)
            return
        if self._continued:
            line = b"\r\n".join([*self._continued, line])
            self._continued.clear()
        # aiosmtpd's push, less its drain() after every reply: that waits only
        # when the client stopped reading or is gone, which these flags say.
        self._writer.write(line + b"\r\n")
        if aiosmtpd_log.isEnabledFor(logging.DEBUG) and self.session is not None:
            aiosmtpd_log.debug("%r << %r", self.session.peer, line)
        # FlowControlMixin's own flags (asyncio.streams), not in the type stubs.
        if self._paused or self._connection_lost:  # type: ignore[attr-defined]
            await self._writer.drain()
        if isinstance(status, str) and status.startswith("421") and self.transport is not None:
            self.transport.close()  # 421: the server closes the connection (RFC 5321 3.8)
        elif isinstance(status, str) and status.startswith("5"):
            self._errors += 1
            if self._errors >= self._limits.max_errors:
                self._refuse_now("errors", "421 4.7.0 Too many errors; closing")

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # The common `<local@domain> PARAMS` is read with a regex: CPython's
        # RFC 5322 parser, which aiosmtpd uses, costs ~4% of a worker's CPU.
        simple = _SIMPLE_ADDRESS.match(arg)
        if simple and not (self.local_part_limit and len(simple.group(2)) > self.local_part_limit):
            return simple.group(1), simple.group(3).lstrip()
        # That parser raises on some hostile input (`MAIL FROM:()"` -> IndexError;
        # found by tests/smtp_fuzz.py): a syntax error for the client, not ours.
        try:
            return super()._getaddr(arg)
        except (IndexError, ValueError, TypeError, AttributeError):
            return None, None

    # -- AUTH ------------------------------------------------------------------

    async def smtp_AUTH(self, arg: str) -> None:
        if not self.policy.auth.enabled:
            await self.push("502 5.5.1 AUTH not available")
            return
        if self.policy.auth.blocked(self._ip):
            AUTH_ATTEMPTS.labels("blocked").inc()
            await self.push("421 4.7.0 Too many failed logins; try again later")
            return
        await super().smtp_AUTH(arg)

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        return AuthResult(success=False, handled=False, message=_PENDING, auth_data=auth_data)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._check_login(await super().auth_PLAIN(server, args))

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._check_login(await super().auth_LOGIN(server, args))

    async def _check_login(self, result: AuthResult) -> AuthResult:
        if result.message != _PENDING:
            return result  # the exchange failed before credentials (bad base64 ...)
        assert self.session is not None
        credentials = result.auth_data
        assert isinstance(credentials, LoginPassword)
        try:
            login = await self.policy.auth.login(
                session_info(self.session),
                credentials.login.decode("utf-8", "replace"),
                credentials.password.decode("utf-8", "replace"),
            )
        except AuthUnavailable:
            return AuthResult(success=False, message="454 4.7.0 Temporary authentication failure")
        if login is None:
            return AuthResult(success=False, handled=False)  # 535 5.7.8
        return AuthResult(success=True, auth_data=login)

    async def smtp_EHLO(self, hostname: str) -> None:
        # EHLO lines are capabilities, not replies to be given status codes.
        self._plain_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._plain_replies = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False

    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd's smtp_DATA, with the data read in large pieces (gateway/smtp_data.py).
        env = self.envelope
        if (
            isinstance(env, GatewayEnvelope)
            and env.mail_from is not None
            and not env.rcpt_tos
            and env.rejected_rcpts
        ):
            await self.push("554 5.5.1 Error: no valid recipients")
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert env is not None
        if not env.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content, refusal = await read_data(
                self._reader, self.data_size_limit, self.line_length_limit
            )
        except asyncio.IncompleteReadError:
            return  # the client went away in the middle
        if refusal is not None:
            await self.push(refusal)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        env.content = env.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)


def _with_enhanced_code(status: str) -> str:
    code = status[:3]
    if not code.isdigit() or code in ("220", "354", "334") or _HAS_ENHANCED.match(status):
        return status
    enhanced = _DEFAULT_ENHANCED.get(int(code))
    if enhanced is None or status[3:4] not in (" ", ""):
        return status
    return f"{code} {enhanced} {status[4:]}".rstrip()


def session_info(session: Session) -> SessionInfo:
    login = session.auth_data if isinstance(session.auth_data, Login) else None
    return SessionInfo(
        peer_ip(session),
        session.host_name or "",
        login.user if login else "",
        login.tenant if login else "",
        login.stream if login else "",
        tls=session.ssl is not None,
    )


def peer_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer or "")


def make_server_factory(
    policy: SessionPolicy,
    config: Config,
    tls: ssl.SSLContext | None = None,
    implicit_tls: bool = False,
) -> Callable[[], GatewaySMTP]:
    """Sessions for one listener: plain with STARTTLS offered when `tls` is
    given, or, with `implicit_tls`, on a listener that is TLS from the start."""
    limits = SessionLimits.from_config(config)
    hooks = SessionHooks(policy)

    def factory() -> GatewaySMTP:
        return GatewaySMTP(
            policy,
            # Else aiosmtpd looks the loop up per connection under
            # warnings.catch_warnings().
            loop=asyncio.get_running_loop(),
            hooks=hooks,
            limits=limits,
            implicit_tls=implicit_tls,
            data_size_limit=config.smtp.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=config.node.hostname,
            ident=config.smtp.banner,
            timeout=config.smtp.timeout,
            tls_context=None if implicit_tls else tls,
            require_starttls=bool(tls) and config.smtp.tls.required and not implicit_tls,
            auth_require_tls=True,
        )

    return factory


async def open_listeners(
    policy: SessionPolicy, config: Config, tls: ssl.SSLContext | None, reuse_port: bool = False
) -> list[asyncio.Server]:
    """The SMTP listeners of [smtp]: plain ones (with STARTTLS when `tls`) and
    implicit-TLS ones. `reuse_port`: several ingress processes share each
    address and the kernel spreads connections over them."""
    loop = asyncio.get_running_loop()
    servers = []
    plain = make_server_factory(policy, config, tls)
    for host, port in config.smtp.listen_addresses():
        servers.append(
            await loop.create_server(plain, host, port, reuse_address=True, reuse_port=reuse_port)
        )
        event("listening", address=f"{host}:{port}", starttls=tls is not None)
    implicit = make_server_factory(policy, config, implicit_tls=True)
    for host, port in config.smtp.submissions_addresses():
        servers.append(
            await loop.create_server(
                implicit, host, port, reuse_address=True, reuse_port=reuse_port, ssl=tls
            )
        )
        event("listening", address=f"{host}:{port}", implicit_tls=True)
    return servers


async def drain_sessions(policy: SessionPolicy, grace: float) -> None:
    """Wait for open transactions to finish, then close every session with 421."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (  # noqa: ASYNC110 - polls state aiosmtpd owns
        policy.in_data or any(s.in_transaction for s in GatewaySMTP.sessions)
    ):
        await asyncio.sleep(0.05)
    closing: list[Awaitable[None]] = []
    for session in list(GatewaySMTP.sessions):
        if session.transport is not None:
            closing.append(_close_session(session))
    await asyncio.gather(*closing, return_exceptions=True)


async def _close_session(session: GatewaySMTP) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(session.push("421 4.3.2 Service shutting down"), 1)
    if session.transport is not None:
        session.transport.close()

"""ICMP probe: a short burst of echoes to a host over a line → median RTT, min/avg/max, jitter and loss.

Doc: docs/probes/icmp.md. Needs a ping socket (net.ipv4.ping_group_range) or CAP_NET_RAW.

The burst is `count` echoes `echo_interval` apart, each given `echo_timeout` to be answered; replies are
taken as they come (the next echo does not wait for the previous reply), so one lost echo costs nothing but
its own loss. The send/receive machinery is an `EchoTransport` (probes/common/echo.py; Linux's is
probes/common/icmp_socket.py); this module is the platform-independent part: schedule, bookkeeping, statistics,
the Measurement.
"""

from __future__ import annotations

import asyncio
import errno
import statistics
import time
from typing import Literal, Sequence

from pydantic import Field, model_validator

from core.config.types import Duration, Host
from core.measurement import Measurement

from .base import ProbeContext, TargetConfig
from .common.dnswire import resolve
from .common.echo import EchoError, EchoTransport
from .common.icmp_socket import LinuxEchoTransport
from .common.netio import allowed_families, classify
from .common.sockets import family_of

NAME = "icmp"
# The fields it can emit (measurement `probe`): documented in docs/probes/icmp.md, declared in core/catalogue.py.
FIELDS: tuple[str, ...] = (
    "up", "result_code", "duration_ms", "dns_ms", "rtt_ms", "rtt_avg_ms", "rtt_min_ms", "rtt_max_ms", "jitter_ms",
    "loss_pct", "sent", "received",
)


class Config(TargetConfig):
    """An ICMP target: `host`, and how many echoes of what size, how far apart, how long each may take."""

    probe: Literal["icmp"] = "icmp"
    host: Host
    count: int = Field(default=10, ge=1, le=1000)
    # 0.2 s: iputils ping's floor for unprivileged users, a rate routers' ICMP limits let through, 10 echoes in 1.8 s.
    echo_interval: Duration = Field(default=0.2, ge=0.01)
    echo_timeout: Duration = 2.0
    payload_size: int = Field(default=56, ge=0, le=65507)
    privileged: bool | Literal["auto"] = "auto"

    @model_validator(mode="after")
    def _burst_fits(self) -> "Config":
        needed = (self.count - 1) * self.echo_interval + self.echo_timeout
        if needed > self.timeout:
            raise ValueError(
                f"{self.count} echoes {self.echo_interval:g}s apart, the last given {self.echo_timeout:g}s, take "
                f"{needed:g}s: more than the timeout {self.timeout:g}s (lower count/echo_interval/echo_timeout "
                f"or raise timeout)"
            )
        return self


def echo_stats(rtts: Sequence[float | None]) -> dict[str, float]:
    """Return the fields for echoes in send order (None = lost): loss, counts, RTT median/avg/min/max, jitter.

    Jitter is the mean of |RTT(i) - RTT(i-1)| over consecutive answered echoes (RFC 3550's idea, unsmoothed);
    it needs two answers. With no answer there is no RTT field at all.
    """
    answered = [r for r in rtts if r is not None]
    sent = len(rtts)
    fields: dict[str, float] = {
        "sent": float(sent),
        "received": float(len(answered)),
        "loss_pct": 100.0 * (sent - len(answered)) / sent if sent else 100.0,
    }
    if answered:
        fields.update(
            rtt_ms=statistics.median(answered),
            rtt_avg_ms=statistics.fmean(answered),
            rtt_min_ms=min(answered),
            rtt_max_ms=max(answered),
        )
    if len(answered) >= 2:
        fields["jitter_ms"] = statistics.fmean(abs(b - a) for a, b in zip(answered, answered[1:]))
    return fields


def open_transport(address: str, config: Config, ctx: ProbeContext, run: "EchoRun") -> EchoTransport:
    """Open this platform's transport (only Linux's exists today)."""
    return LinuxEchoTransport.open(
        address,
        privileged=config.privileged,
        line=ctx.line,
        payload_size=config.payload_size,
        on_reply=run.reply,
        on_error=run.error,
    )


class EchoRun:
    """Bookkeeping of one burst: what was sent when, what came back, what the network said."""

    def __init__(self, count: int, echo_timeout: float | None = None) -> None:
        self.rtts: list[float | None] = [None] * count
        self.sent_at: list[float | None] = [None] * count  # monotonic s
        self.errors: dict[int | None, str] = {}
        self.sent = 0
        self.echo_timeout_ms = None if echo_timeout is None else echo_timeout * 1000.0
        self.changed = asyncio.Event()

    def reply(self, seq: int, rtt_ms: float) -> None:
        """Record the reply to echo `seq`; late (RTT over echo_timeout), unknown or repeated ones are ignored."""
        if not (0 <= seq < len(self.rtts) and self.sent_at[seq] is not None and self.rtts[seq] is None):
            return
        if self.echo_timeout_ms is not None and rtt_ms > self.echo_timeout_ms:
            return  # a loss by definition, whether or not other echoes are still being waited for
        self.rtts[seq] = rtt_ms
        self.changed.set()

    def error(self, error: EchoError) -> None:
        """Record an ICMP error (or a local send error) about echo `error.seq`."""
        self.errors[error.seq] = error.detail
        self.changed.set()

    def done(self, seq: int) -> bool:
        """Whether echo `seq` needs no more waiting: answered or refused."""
        return self.rtts[seq] is not None or seq in self.errors


async def run_burst(transport: EchoTransport, run: EchoRun, config: Config, deadline: float) -> None:
    """Send the echoes on schedule and wait until every one is answered, refused or expired, or the deadline."""
    start = time.monotonic()
    for seq in range(config.count):
        delay = start + seq * config.echo_interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.monotonic() >= deadline:
            break
        run.sent_at[seq] = time.monotonic()
        run.sent += 1
        try:
            transport.send(seq)
        except OSError as exc:
            _result, detail = classify(exc)
            if exc.errno in (errno.EPERM, errno.EACCES):  # on send: a local firewall rule, not our privileges
                detail = "a firewall rule on this PC refused the echo request"
            run.error(EchoError(seq, detail))
    # Only echoes still open are waited for: an expired one leaves the set, so the wait is always until the
    # next reply, error or expiry, never a zero timeout (keeping expired echoes made a silent line spin the CPU).
    expires = {seq: sent + config.echo_timeout for seq, sent in enumerate(run.sent_at) if sent is not None}
    reached = 0.0  # the latest wake-up time a timer fired for
    while True:
        # A timer may fire a hair before monotonic() reaches its time: what it fired for counts as reached.
        now = max(time.monotonic(), reached)
        for seq in [s for s, at in expires.items() if at <= now or run.done(s)]:
            del expires[seq]
        if not expires or now >= deadline:
            return
        wake = min(deadline, *expires.values())  # > now: every echo left expires later
        run.changed.clear()
        try:
            async with asyncio.timeout(wake - now):
                await run.changed.wait()
        except TimeoutError:
            reached = wake


async def probe(config: Config, ctx: ProbeContext) -> Measurement:
    """Send `count` echoes to `host` over the line; up when at least one is answered."""
    fields: dict[str, float | None] = {}
    try:
        families = allowed_families(ctx)
        addresses, dns_ms = await resolve(ctx, config.host, families)
        fields["dns_ms"] = dns_ms
        usable = [a for a in addresses if family_of(a) in families]  # an IP literal comes back unfiltered
        if not usable:
            detail = f"{config.host} has no address that ip_family/the line's source address allows"
            return ctx.failure("dns_error" if not addresses else "unreachable", detail, fields)
        address = usable[0]
        run = EchoRun(config.count, config.echo_timeout)
        transport = open_transport(address, config, ctx, run)
    except Exception as exc:  # noqa: BLE001 - every failure is data
        result, detail = classify(exc)
        if result == "unreachable":
            # No route (e.g. the line is down): no echo can leave, which the loss series should show as 100 %.
            fields.update(echo_stats([]))
        return ctx.failure(result, detail, fields)
    try:
        ctx.note_local_address(transport.local_address)
        await run_burst(transport, run, config, time.monotonic() + ctx.remaining())
    except Exception as exc:  # noqa: BLE001
        return ctx.failure(*classify(exc), fields)
    finally:
        transport.close()
    # Echoes never sent (the deadline came first) are not losses: loss is over what was sent.
    fields.update(echo_stats([rtt for rtt, sent in zip(run.rtts, run.sent_at) if sent is not None]))
    if fields["received"]:
        return ctx.success(fields)
    if run.errors:
        detail = next(iter(run.errors.values()))
        return ctx.failure("unreachable", f"{address}: {detail}", fields)
    return ctx.failure("timeout", f"no echo reply from {address} ({run.sent} sent)", fields)

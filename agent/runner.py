"""Run probes: one target over one line (`run_target`), or every target over its lines once (`run_once`).

The runtime, not the probe, owns what every run needs (as Telegraf's running_input does): a hard timeout of
the target's timeout plus a grace period, turning ANY exception into data (`result=error`, traceback logged),
and the identity tags province/commune/agent on every Measurement and Event the run produced. A probe returns
one Measurement or a `ProbeResult` (several Measurements, Events); `run_target` always gives a `ProbeResult`.
`run_probe` is the same for a probe that measures one thing, returning its Measurement. The long-running
agent's scheduler calls `run_target`, for the targets and for the agent's own probes (`host_target`: host health).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from probes import registry
from probes.base import Line, ProbeContext, ProbeResult
from core.measurement import Measurement

from .config import AgentConfig, BoundTarget

log = logging.getLogger(__name__)

# Probes budget their own work with ctx.remaining(); the grace lets one that overruns slightly still report
# what it measured before the runner cuts it off.
GRACE_S = 1.0
CONCURRENCY = 16


@dataclass(frozen=True, slots=True)
class Run:
    """One planned probe run: a target over a line (None: unpinned, no lines configured)."""

    target: BoundTarget
    line: Line | None


def plan(config: AgentConfig, *, targets: set[str] | None = None, line: str | None = None) -> list[Run]:
    """Return the runs of one round, in file order, optionally only some targets and/or one line."""
    runs = []
    for target in config.targets:
        if targets is not None and target.name not in targets:
            continue
        for each in config.lines_for(target):
            if line is None or (each is not None and each.name == line):
                runs.append(Run(target, each))
    return runs


def identity_tags(config: AgentConfig) -> dict[str, str]:
    """Return the tags every measurement of this agent carries."""
    agent = config.agent
    return {"province": agent.province, "commune": agent.commune, "agent": agent.id}


def host_target(config: AgentConfig) -> BoundTarget:
    """Return the agent's host-health probe (probes/host.py) as a target run every `schedule.host_interval`."""
    module = registry.probe_module("host")
    return BoundTarget("agent", module.Config(interval=config.schedule.host_interval), module, shared=False)


async def run_target(config: AgentConfig, target: BoundTarget, line: Line | None) -> ProbeResult:
    """Run one probe with a hard timeout; never raise (except cancellation); add identity tags to all it gave."""
    ctx = ProbeContext(
        service=target.service,
        target=target.config,
        line=line,
        all_lines=config.line_objects(),
        resolvers=config.resolvers,
    )
    try:
        async with asyncio.timeout(target.config.timeout + GRACE_S):
            result = ProbeResult.of(await target.module.probe(target.config, ctx))
    except TimeoutError:
        log.warning("probe %s (%s) overran its %gs timeout", target.name, ctx.line_tag, target.config.timeout)
        result = ProbeResult.of(ctx.failure("timeout", f"no answer in {target.config.timeout:g} s"))
    except Exception as exc:  # noqa: BLE001 - a bug in a probe is still data, and must not stop the others
        log.exception("probe %s (%s, line %s) failed with a bug", target.name, target.config.probe, ctx.line_tag)
        failure = ctx.failure("error", f"the {target.config.probe} probe failed: {type(exc).__name__}: {exc}")
        result = ProbeResult.of(failure)
    return result.with_tags(**identity_tags(config))


async def run_probe(config: AgentConfig, target: BoundTarget, line: Line | None) -> Measurement:
    """Run a probe that measures one thing (every target's probe) and return its one Measurement."""
    result = await run_target(config, target, line)
    if len(result.measurements) != 1:
        raise ValueError(f"probe {target.name} gave {len(result.measurements)} measurements: use run_target")
    return result.measurements[0]


async def run_once(
    config: AgentConfig,
    *,
    target: str | set[str] | None = None,
    line: str | None = None,
    concurrency: int = CONCURRENCY,
) -> list[Measurement]:
    """Run every target over each of its lines once (at most `concurrency` at a time); their Measurements in
    plan order (Events, which no target's probe gives yet, are logged)."""
    names = {target} if isinstance(target, str) else target
    semaphore = asyncio.Semaphore(concurrency)

    async def bounded(run: Run) -> ProbeResult:
        async with semaphore:  # the probe's clock starts once it may run, inside run_target
            return await run_target(config, run.target, run.line)

    results = await asyncio.gather(*(bounded(run) for run in plan(config, targets=names, line=line)))
    for event in (e for r in results for e in r.events):
        log.info("event %s %s: %s", event.kind, event.tags, event.text)
    return [m for r in results for m in r.measurements]


__all__ = ["CONCURRENCY", "GRACE_S", "Run", "host_target", "identity_tags", "plan", "run_once", "run_probe",
           "run_target"]

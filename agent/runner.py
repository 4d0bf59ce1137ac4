"""Run probes: one target over one line (`run_probe`), or every target over its lines once (`run_once`).

The runtime, not the probe, owns what every run needs (as Telegraf's running_input does): a hard timeout of
the target's timeout plus a grace period, turning ANY exception into data (`result=error`, traceback logged),
and the identity tags province/commune/agent. The long-running agent's scheduler calls `run_probe` too.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from probes.base import Line, ProbeContext
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


async def run_probe(config: AgentConfig, target: BoundTarget, line: Line | None) -> Measurement:
    """Run one probe with a hard timeout; never raise (except cancellation); add identity tags."""
    ctx = ProbeContext(
        service=target.service,
        target=target.config,
        line=line,
        all_lines=config.line_objects(),
        resolvers=config.resolvers,
    )
    try:
        async with asyncio.timeout(target.config.timeout + GRACE_S):
            measurement = await target.module.probe(target.config, ctx)
        if not isinstance(measurement, Measurement):
            raise TypeError(f"probe returned {type(measurement).__name__}, not a Measurement")
    except TimeoutError:
        log.warning("probe %s (%s) overran its %gs timeout", target.name, ctx.line_tag, target.config.timeout)
        measurement = ctx.failure("timeout", f"no answer in {target.config.timeout:g} s")
    except Exception as exc:  # noqa: BLE001 - a bug in a probe is still data, and must not stop the others
        log.exception("probe %s (%s, line %s) failed with a bug", target.name, target.config.probe, ctx.line_tag)
        measurement = ctx.failure("error", f"the {target.config.probe} probe failed: {type(exc).__name__}: {exc}")
    return measurement.with_tags(**identity_tags(config))


async def run_once(
    config: AgentConfig,
    *,
    target: str | set[str] | None = None,
    line: str | None = None,
    concurrency: int = CONCURRENCY,
) -> list[Measurement]:
    """Run every target over each of its lines once (at most `concurrency` at a time); results in plan order."""
    names = {target} if isinstance(target, str) else target
    semaphore = asyncio.Semaphore(concurrency)

    async def bounded(run: Run) -> Measurement:
        async with semaphore:  # the probe's clock starts once it may run, inside run_probe
            return await run_probe(config, run.target, run.line)

    return list(await asyncio.gather(*(bounded(run) for run in plan(config, targets=names, line=line))))


__all__ = ["CONCURRENCY", "GRACE_S", "Run", "identity_tags", "plan", "run_once", "run_probe"]

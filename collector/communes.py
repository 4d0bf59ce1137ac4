"""What the centre knows of each commune: the directory's list joined with the fleet registry (pure functions).

A commune in the directory with no agent ever seen is `no_data` — never taken for fine. One whose agents all
said `stopping` last is `stopped` (PCs switched off: not an outage). One with an agent heard from within
`SILENT_AFTER_S` is `reporting`; otherwise `silent`. A commune that reports but is not in the directory is
listed too, as `unlisted` (a new commune, or a typo in an agent's config). The line state from the per-line
heartbeat and the alerts come on top of this.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .directory import Directory

SILENT_AFTER_S = 300.0  # self-metrics every 30 s, a heartbeat every 60 s: five minutes of nothing is silence
STATES = ("reporting", "silent", "stopped", "no_data", "unlisted")


def commune_state(agents: list[Mapping[str, Any]], now_ms: int, silent_after_s: float = SILENT_AFTER_S) -> str:
    """Return `reporting`, `silent`, `stopped` or `no_data` for a commune's fleet-registry rows."""
    seen = [a for a in agents if a.get("last_seen_ms")]
    if not seen:
        return "no_data"
    if any(now_ms - int(a["last_seen_ms"]) <= silent_after_s * 1000 and a.get("state") != "stopping" for a in seen):
        return "reporting"
    if all(a.get("state") == "stopping" for a in seen):
        return "stopped"
    return "silent"


def communes(directory: Directory | None, agents: Iterable[Mapping[str, Any]], now_ms: int,
             silent_after_s: float = SILENT_AFTER_S) -> list[dict[str, Any]]:
    """Return one entry per commune of the directory (in its order), then the unlisted ones that report."""
    by_commune: dict[str, list[Mapping[str, Any]]] = {}
    for row in agents:
        by_commune.setdefault(str(row["commune"]), []).append(row)
    out = []
    for entry in directory.file.communes if directory else ():
        rows = by_commune.pop(entry.slug, [])
        out.append({
            "commune": entry.slug, "name": entry.name, "code": entry.code,
            "state": commune_state(rows, now_ms, silent_after_s), **_agents(rows),
            "lines": [{"name": line.name, "isp": line.isp, "kind": line.kind, "metered": line.metered}
                      for line in entry.lines],
        })
    for slug in sorted(by_commune):
        rows = by_commune[slug]
        state = commune_state(rows, now_ms, silent_after_s) if directory is None else "unlisted"
        out.append({"commune": slug, "name": None, "code": None, "state": state, **_agents(rows), "lines": []})
    return out


def _agents(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    seen = [int(r["last_seen_ms"]) for r in rows if r.get("last_seen_ms")]
    return {"agents": sorted(str(r["agent"]) for r in rows), "last_seen_ms": max(seen) if seen else None}


__all__ = ["SILENT_AFTER_S", "STATES", "commune_state", "communes"]

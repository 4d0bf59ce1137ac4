"""The province's monitoring stack in the lab: VictoriaMetrics and the collector in the data center, an agent on
the counter PC running the standard commune profile — enrolled the way an installer does it.

    with Lab() as lab:
        stack = ProvinceStack(lab).start()                  # VM + `cmon collector run` in dc
        config = stack.agent_config(interval="10s")         # configs/commune-standard.yaml on the lab's names
        stack.enroll(config)                                # token create (dc) → cmon agent enroll (pc, stdin)
        agent = stack.start_agent(config)                   # `cmon agent run` in pc
        ...; stack.probe_samples(); stack.agents()

The collector listens on plain HTTP (`allow_http`) on COLLECTOR_ADDR, an extra address of dc: the lab's PKI has
no collector certificate. Everything started here is stopped by `lab.down()`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from lab import Lab, LabError, addresses as A
from lab.servers import run_in_netns
from lab.servers.province import CREDENTIALS
from lab.servers.web import DVC_TITLE, IOFFICE_TITLE, IOFFICE_WELCOME

REPO_ROOT = Path(__file__).resolve().parents[1]
STANDARD_PROFILE = REPO_ROOT / "configs" / "commune-standard.yaml"
CMON = str(Path(sys.executable).with_name("cmon"))
COLLECTOR_ADDR = "198.51.100.100"  # added to dc: the collector is a province server like the others
COLLECTOR_PORT = 8080
VM_PORT = 8428
VIEWS_TOKEN = "lab-views-token"  # lets the lab read the fleet registry from outside the collector's host

# What the lab's servers answer, and the iOffice account: from the servers themselves, not copied.
LAB_TEXTS = {"ioffice-web": IOFFICE_TITLE, "ioffice-login": IOFFICE_WELCOME, "dvc-web": DVC_TITLE}
LAB_LOGIN = dict(zip(("username", "password"), CREDENTIALS["ioffice"]))


def lab_profile(pki: dict[str, str], workdir: Path, interval: str | None = None) -> dict:
    """Return configs/commune-standard.yaml moved onto the lab: names, CAs, lines, resolver, collector."""
    data = yaml.safe_load(STANDARD_PROFILE.read_text(encoding="utf-8"))
    data = json.loads(json.dumps(data, ensure_ascii=False).replace("example.gov.vn", "lab.test"))
    data["agent"].update(province="lab", commune="lab-commune", id="pc")
    data["collector"] = {**data["collector"], "url": f"http://{COLLECTOR_ADDR}:{COLLECTOR_PORT}", "allow_http": True,
                         "credential_file": str(workdir / "credential.json")}
    data["spool"]["path"] = str(workdir / "spool.db")
    data["lines"]["backup"]["source"] = A.PC_BACKUP_ADDR
    data["resolvers"] = [A.DNS_ADDR]
    if interval is not None:
        data.setdefault("defaults", {})["interval"] = interval
        data["schedule"]["host_interval"] = interval
    for service, targets in data["services"].items():
        for target in targets:
            name = target["name"]
            if name in LAB_TEXTS:
                target["expect_text"] = LAB_TEXTS[name]
            if "login" in target:
                target["login"]["fields"] = dict(LAB_LOGIN)
            if target["probe"] in ("http", "tls", "smtp", "imap"):
                target["ca_file"] = pki["province"] if service == "dvc" else pki["public"]
            if name == "internet-ping":
                target["host"] = A.INTERNET_ADDR
            if name == "internet-dns":
                target["query_name"] = "ns.lab.test"  # the lab has no internet: a name the resolver answers
    return data


def http(netns: str, url: str, timeout: float = 10.0, data: bytes | None = None, headers: dict | None = None) -> str:
    """GET (POST with `data`) `url` from inside `netns`; return the body."""
    def fetch() -> str:
        request = urllib.request.Request(url, data=data, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read().decode()
    return run_in_netns(netns, fetch)


def wait_http(netns: str, url: str, timeout: float = 30.0) -> None:
    """Wait until `url` answers from inside `netns`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            http(netns, url, timeout=2)
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise LabError(f"{url} did not answer in {timeout:g} s: {exc}") from exc
            time.sleep(0.2)


class ProvinceStack:
    """VictoriaMetrics + the collector in the lab's dc, agents on pc; files under `<lab workdir>/stack`."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.work = Path(lab.workdir) / "stack"
        self.work.mkdir(exist_ok=True)
        self.collector_config = self.work / "collector.yaml"
        self.collector_url = f"http://{COLLECTOR_ADDR}:{COLLECTOR_PORT}"
        self.vm_url = f"http://127.0.0.1:{VM_PORT}"

    def _start(self, role: str, argv: list[str], log: str, **kw: Any) -> subprocess.Popen:
        with open(self.work / log, "ab") as out:
            return self.lab.popen(role, argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)

    def start(self) -> "ProvinceStack":
        """Start VictoriaMetrics (dc's loopback) and `cmon collector run` (COLLECTOR_ADDR, plain HTTP)."""
        self._start("dc", ["victoria-metrics", f"-httpListenAddr=127.0.0.1:{VM_PORT}",
                           f"-storageDataPath={self.work / 'vm'}", "-retentionPeriod=30d",
                           "-dedup.minScrapeInterval=1ms", "-loggerLevel=ERROR"], "vm.log")
        self.lab.exec("dc", ["ip", "addr", "add", f"{COLLECTOR_ADDR}/24", "dev", A.DC_IF], check=True)
        config = {"province": "lab", "data_dir": str(self.work / "collector"),
                  "listen": {"host": COLLECTOR_ADDR, "port": COLLECTOR_PORT, "allow_http": True},
                  "views_token": VIEWS_TOKEN,
                  "database": {"url": self.vm_url, "timeout": "10s", "retention": "30d"}}
        self.collector_config.write_text(yaml.safe_dump(config))
        wait_http(self.lab.ns("dc"), f"{self.vm_url}/health")
        self._start("dc", [CMON, "collector", "run", "-c", str(self.collector_config)], "collector.log",
                    cwd=REPO_ROOT)
        wait_http(self.lab.ns("pc"), f"{self.collector_url}/health")
        return self

    def agent_config(self, interval: str | None = None, name: str = "agent.yaml") -> Path:
        """Write the standard profile moved onto the lab (optionally every `interval`); return its path."""
        ca = self.lab.province.info["ca"]
        pki = {"public": str(ca["public"]), "province": str(ca["province"])}
        path = self.work / name
        path.write_text(yaml.safe_dump(lab_profile(pki, self.work, interval), allow_unicode=True, sort_keys=False),
                        encoding="utf-8")
        return path

    def enroll(self, agent_config: Path, commune: str = "lab-commune") -> None:
        """Enroll like an installer: `cmon collector token create` in dc, the token on stdin of `cmon agent enroll`."""
        token = self.lab.exec("dc", [CMON, "collector", "token", "create", "-c", str(self.collector_config),
                                     "--commune", commune], capture_output=True, text=True, check=True).stdout
        enrolled = self.lab.exec("pc", [CMON, "agent", "enroll", "-c", str(agent_config), "--allow-http"],
                                 input=token, capture_output=True, text=True)
        if enrolled.returncode != 0:
            raise LabError(f"cmon agent enroll failed: {enrolled.stderr.strip()}")

    def start_agent(self, agent_config: Path, log: str = "agent.log") -> subprocess.Popen:
        """Start `cmon agent run` on the counter PC."""
        return self._start("pc", [CMON, "--log-level", "warning", "agent", "run", "-c", str(agent_config)], log,
                           cwd=self.work)

    def probe_samples(self) -> dict[tuple[str, str], list[float]]:
        """Return VM's `probe_up` values per (target, line), after a flush."""
        dc = self.lab.ns("dc")
        http(dc, f"{self.vm_url}/internal/force_flush")
        text = http(dc, f"{self.vm_url}/api/v1/export", data=b"match[]=probe_up")
        out: dict[tuple[str, str], list[float]] = {}
        for row in (json.loads(x) for x in text.splitlines() if x.strip()):
            key = (row["metric"].get("target", "?"), row["metric"].get("line", "?"))
            out.setdefault(key, []).extend(row["values"])
        return out

    def agents(self) -> list[dict]:
        """Return the collector's fleet registry (GET /api/v1/agents)."""
        text = http(self.lab.ns("pc"), f"{self.collector_url}/api/v1/agents",
                    headers={"Authorization": f"Bearer {VIEWS_TOKEN}"})
        return json.loads(text)["agents"]

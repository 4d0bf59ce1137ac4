"""The province directory: which communes exist, their lines and who to tell (docs/directory.md).

One YAML file per province, validated like every config (`file:line: key.path: message`, every error at once,
did-you-mean for a misspelt key): the communes (slug, Vietnamese display name, optional administrative code),
each commune's lines (name, ISP, kind, metered, the egress addresses or prefixes the collector sees its requests
come from) and contacts (the commune's IT staff; the provincial team). The collector reads it at start and
refuses to start on errors; `cmon check-config` recognises it by its `communes:` key.

What it is for: a commune in the directory that never reported is "no data", not "fine" (`/api/v1/communes`);
the egress address of a commune's request names the line it came over (`Directory.line_of`, longest prefix
first; per commune, since 4G lines of several communes often share a carrier's address pool); names with diacritics are for the messages people read. Names are NFC-normalised, so a name typed on a
keyboard that composes differently compares equal.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from core.config.issues import ConfigError, ConfigIssue
from core.config.loader import LocatedYaml, read_yaml
from core.config.types import Slug, StrictModel
from core.config.validation import validate_model

LINE_KINDS = ("fiber", "adsl", "vdsl", "4g", "5g", "satellite", "leased", "other")
# Vietnamese administrative unit codes (mã đơn vị hành chính) are 5 digits; allow the 2-digit province code too.
_CODE = re.compile(r"\d{2}(\d{3})?\Z")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+\Z")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _nfc(value: str) -> str:
    text = unicodedata.normalize("NFC", value).strip()
    if not text or not text.isprintable():
        raise ValueError("must be printable text, not empty")
    return text


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _network(value: Any) -> Network:
    try:
        net = ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or prefix (e.g. 203.0.113.7 or 203.0.113.0/29)") from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        # `::ffff:203.0.113.10` is the IPv4 address as a dual-stack socket shows it: keep it as IPv4
        return ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def _code(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and len(str(value)) not in (2, 5):
        # YAML reads `code: 00001` as the number 1: the leading zeros are gone before we see it
        raise ValueError(f"{value!r} is not an administrative code: write it in quotes (code: \"00001\"), or YAML "
                         "drops its leading zeros")
    text = str(value).strip()
    if not _CODE.match(text):
        raise ValueError(f"{value!r} is not an administrative code (5 digits, e.g. 18073)")
    return text


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError(f"{value!r} is not an email address")
    return value


def _chat_id(value: Any) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"-?\d{1,20}|@[A-Za-z0-9_]{5,32}", text):
        raise ValueError(f"{value!r} is not a Telegram chat id (a number such as -1001234567890, or @channelname)")
    return text


def _zalo_id(value: Any) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"\d{6,25}", text):
        raise ValueError(f"{value!r} is not a Zalo user id (digits)")
    return text


def _some(what: str):  # noqa: ANN202 - a validator factory
    def check(items: list) -> list:
        if not items:
            raise ValueError(f"list at least one {what}")
        return items
    return AfterValidator(check)


Text = Annotated[str, AfterValidator(_nfc)]
Egress = Annotated[Network, BeforeValidator(_network)]


class Contact(StrictModel):
    """Someone to tell: by email, Telegram or Zalo (at least one)."""

    name: Text
    role: Text | None = None
    email: Annotated[str, AfterValidator(_email)] | None = None
    telegram_chat_id: Annotated[str, BeforeValidator(_chat_id)] | None = None
    zalo_user_id: Annotated[str, BeforeValidator(_zalo_id)] | None = None

    def model_post_init(self, _context: Any) -> None:
        if not (self.email or self.telegram_chat_id or self.zalo_user_id):
            raise ValueError("a contact needs at least one of email, telegram_chat_id, zalo_user_id")


class LineEntry(StrictModel):
    """One of a commune's Internet lines."""

    name: Slug  # the agent config's line name: primary, backup, ...
    isp: Text
    kind: Literal["fiber", "adsl", "vdsl", "4g", "5g", "satellite", "leased", "other"]
    metered: bool = False  # paid by volume (4G): heartbeats beat less often there
    egress: list[Egress] = Field(default_factory=list)  # addresses/prefixes the collector sees this line's traffic from


class Commune(StrictModel):
    """One commune or ward's service center."""

    slug: Slug  # the agents' `agent.commune`
    name: Text  # with diacritics: "Xã Đồng Lộc"
    code: Annotated[str, BeforeValidator(_code)] | None = None
    lines: Annotated[list[LineEntry], _some("line (its primary)")]
    contacts: list[Contact] = Field(default_factory=list)


class DirectoryFile(StrictModel):
    """The whole file."""

    province: Slug
    name: Text  # "Hà Tĩnh"
    team: list[Contact] = Field(default_factory=list)  # the provincial IT team
    communes: Annotated[list[Commune], _some("commune")]


TOP_LEVEL_KEYS = frozenset(DirectoryFile.model_fields)


class DirectoryError(ConfigError):
    """The directory has errors; `issues` lists every one (`file:line: key.path: message`)."""


@dataclass(frozen=True)
class Directory:
    """The validated directory, with lookups."""

    file: DirectoryFile
    path: str

    @property
    def province(self) -> str:
        return self.file.province

    def commune(self, slug: str) -> Commune | None:
        """Return the commune with this slug, or None."""
        return next((c for c in self.file.communes if c.slug == slug), None)

    def slugs(self) -> list[str]:
        """Return every commune's slug, in the file's order."""
        return [c.slug for c in self.file.communes]

    def line_of(self, commune: str, address: str | None) -> str | None:
        """Return the name of the commune's line whose egress holds `address` (the longest prefix), or None.

        Per commune (the credential says which): two communes' 4G lines often leave through one carrier's
        address pool, so an address alone cannot name a commune."""
        entry = self.commune(commune)
        try:
            ip = ipaddress.ip_address((address or "").split("%")[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        best: tuple[int, str] | None = None
        for line in entry.lines if entry else ():
            for net in line.egress:
                if ip.version == net.version and ip in net and (best is None or net.prefixlen > best[0]):
                    best = (net.prefixlen, line.name)
        return best[1] if best else None


def load_directory(path: str | Path) -> Directory:
    """Read and validate a directory file; DirectoryError with every problem."""
    try:
        located = read_yaml(path)
    except ConfigError as exc:
        raise DirectoryError(exc.issues) from None
    return from_yaml(located)


def from_yaml(located: LocatedYaml) -> Directory:
    """Validate a loaded directory (`read_yaml`); DirectoryError with every problem."""
    issues = list(located.issues)
    if not isinstance(located.data, dict):
        issues.append(located.issue((), "the file is empty or not a mapping: a directory needs province:, name: and "
                                        "communes:"))
        raise DirectoryError(issues)
    parsed, invalid = validate_model(DirectoryFile, located.data, located, skip=located.refused)
    issues += invalid + _cross_checks(located)
    issues.sort(key=lambda issue: issue.line)
    if issues or parsed is None:
        raise DirectoryError(issues)
    return Directory(parsed, located.file)


def _cross_checks(located: LocatedYaml) -> list[ConfigIssue]:
    """Return what one entry cannot see alone: a slug, code or line name used twice; an egress prefix given to two
    lines of one commune. Read from the raw document, so they are reported with the entries' own errors."""
    issues: list[ConfigIssue] = []
    communes = located.data.get("communes")
    seen: dict[tuple[str, str], int] = {}
    for i, commune in enumerate(communes if isinstance(communes, list) else []):
        if not isinstance(commune, dict):
            continue
        for what in ("slug", "code"):
            value = commune.get(what)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                first = seen.setdefault((what, str(value)), i)
                if first != i:
                    issues.append(located.issue(("communes", i, what), f"{what} {str(value)!r} is already used by "
                                                f"communes[{first}] (line {located.line_of(('communes', first))})"))
        names: dict[str, int] = {}
        claimed: dict[Network, tuple[str, tuple]] = {}  # within a commune an address must name one line
        lines = commune.get("lines")
        for j, line in enumerate(lines if isinstance(lines, list) else []):
            if not isinstance(line, dict):
                continue
            name = line.get("name")
            if isinstance(name, str) and names.setdefault(name, j) != j:
                issues.append(located.issue(("communes", i, "lines", j, "name"),
                                            f"line {name!r} is listed twice for this commune"))
            egress = line.get("egress")
            for k, value in enumerate(egress if isinstance(egress, list) else []):
                try:
                    net = _network(value)
                except ValueError:
                    continue  # reported by validation
                where = ("communes", i, "lines", j, "egress", k)
                owner = claimed.setdefault(net, (str(name), where))
                if owner[1] != where:
                    issues.append(located.issue(where, f"{net} is already the egress of line {owner[0]!r} (line "
                                                f"{located.line_of(owner[1])}): within a commune an address must "
                                                "name one line"))
    return issues


__all__ = ["LINE_KINDS", "TOP_LEVEL_KEYS", "Commune", "Contact", "Directory", "DirectoryError", "DirectoryFile",
           "LineEntry", "from_yaml", "load_directory"]

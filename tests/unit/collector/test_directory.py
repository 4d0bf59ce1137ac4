"""The province directory: the shipped example loads and names each line by its egress address (longest prefix,
per commune, IPv6 and IPv4-mapped addresses); a bad directory gives every exact `file:line: key.path: message` at
once; the collector config's `directory:` key (missing file, the directory's own errors, another province);
the commune states (pure); `GET /api/v1/communes` on a real collector app; `cmon check-config` and
`cmon collector token create --commune` against the directory."""

from __future__ import annotations

import shutil
import unicodedata
from pathlib import Path

import pytest

from cmon import cli
from collector.app import create_app
from collector.communes import SILENT_AFTER_S, commune_state, communes
from collector.config import CollectorConfigError, load_config, parse_config
from collector.directory import DirectoryError, load_directory
from collector_helpers import collector_client, config_dict, credential, post

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "configs" / "directory-example.yaml"
NO_VM = "http://127.0.0.1:9"  # nothing here writes measurements: the writer never connects
NOW = 1_800_000_000_000


# --- the shipped example ---------------------------------------------------------------------------------------

def test_the_example_loads_every_commune_line_and_contact() -> None:
    directory = load_directory(EXAMPLE)
    assert (directory.province, directory.file.name, directory.path) == ("ha-tinh", "Hà Tĩnh", str(EXAMPLE))
    assert directory.slugs() == ["dong-loc", "thanh-sen", "cam-xuyen", "ky-anh"]
    assert [(c.name, c.code) for c in directory.file.communes] == [
        ("Xã Đồng Lộc", "18073"), ("Phường Thành Sen", "18001"), ("Xã Cẩm Xuyên", None), ("Xã Kỳ Anh", None)]
    lines = {c.slug: [(ln.name, ln.isp, ln.kind, ln.metered, [str(n) for n in ln.egress]) for ln in c.lines]
             for c in directory.file.communes}
    assert lines == {
        "dong-loc": [("primary", "VNPT", "fiber", False, ["203.0.113.10/32"]),
                     ("backup", "Viettel", "4g", True, ["198.51.100.0/24"])],
        "thanh-sen": [("primary", "Viettel", "fiber", False, ["203.0.113.20/32", "2001:db8:20::/48"]),
                      ("backup", "VNPT", "vdsl", False, ["203.0.113.21/32"])],
        "cam-xuyen": [("primary", "FPT", "fiber", False, ["192.0.2.30/32"]),
                      ("backup", "MobiFone", "4g", True, ["198.51.100.0/24"])],
        "ky-anh": [("primary", "VNPT", "adsl", False, ["192.0.2.40/32"])],
    }
    contact = lambda c: (c.name, c.role, c.email, c.telegram_chat_id, c.zalo_user_id)  # noqa: E731
    assert [contact(c) for c in directory.file.team] == [
        ("Phòng Công nghệ thông tin, Sở Khoa học và Công nghệ", None, "cntt@example.gov.vn", "-1001234567890", None)]
    assert {c.slug: [contact(p) for p in c.contacts] for c in directory.file.communes} == {
        "dong-loc": [("Nguyễn Văn An", "công chức phụ trách CNTT", "an.nv@example.gov.vn", None, "8412345678901")],
        "thanh-sen": [("Trần Thị Bình", None, "binh.tt@example.gov.vn", "123456789", None)],
        "cam-xuyen": [], "ky-anh": []}
    assert directory.commune("thanh-sen").name == "Phường Thành Sen"
    assert directory.commune("ha-noi") is None


@pytest.mark.parametrize("commune, address, line", [
    ("dong-loc", "203.0.113.10", "primary"),              # the exact address
    ("dong-loc", "198.51.100.77", "backup"),              # inside a prefix (a carrier pool)
    ("cam-xuyen", "198.51.100.77", "backup"),             # the same pool, shared by another commune's 4G line
    ("thanh-sen", "203.0.113.21", "backup"),
    ("ky-anh", "203.0.113.10", None),                     # dong-loc's address: not a line of ky-anh
    ("cam-xuyen", "203.0.113.20", None),                  # thanh-sen's
    ("dong-loc", "203.0.113.11", None),                   # next to an exact address: nobody's
    ("thanh-sen", "2001:db8:20::5", "primary"),           # IPv6 in a /48
    ("thanh-sen", "2001:db8:21::5", None),
    ("dong-loc", "::ffff:203.0.113.10", "primary"),       # IPv4-mapped IPv6 (a dual-stack socket)
    ("cam-xuyen", "::ffff:198.51.100.1", "backup"),
    ("dong-loc", "::ffff:203.0.113.11", None),
    ("thanh-sen", "fe80::1%eth0", None),                  # a zone is dropped, the address is nobody's
    ("dong-loc", "not-an-address", None),                 # garbage
    ("dong-loc", "", None),
    ("dong-loc", None, None),
    ("dong-loc", "203.0.113.10/32", None),                # a prefix is not an address
    ("ha-noi", "203.0.113.10", None),                     # an unknown commune
])
def test_line_of_the_example(commune: str, address: str | None, line: str | None) -> None:
    assert load_directory(EXAMPLE).line_of(commune, address) == line


def test_the_longest_prefix_wins_when_a_communes_lines_nest(tmp_path: Path) -> None:
    path = tmp_path / "directory.yaml"
    path.write_text("""\
province: ha-tinh
name: Hà Tĩnh
communes:
  - slug: dong-loc
    name: Xã Đồng Lộc
    lines:
      - {name: backup, isp: Viettel, kind: 4g, egress: [10.20.0.0/16, "2001:db8::/32"]}
      - {name: primary, isp: VNPT, kind: fiber, egress: [10.20.30.0/24, "2001:db8:1::/48"]}
      - {name: third, isp: FPT, kind: fiber, egress: [10.20.30.40]}
  - slug: ky-anh
    name: Xã Kỳ Anh
    lines:
      - {name: primary, isp: VNPT, kind: adsl, egress: [10.0.0.0/8]}
""", encoding="utf-8")
    directory = load_directory(path)
    assert [directory.line_of("dong-loc", a) for a in (
        "10.20.1.1", "10.20.30.1", "10.20.30.40", "::ffff:10.20.30.40", "2001:db8:2::1", "2001:db8:1::1",
        "10.21.0.1")] == ["backup", "primary", "third", "third", "backup", "primary", None]
    # ky-anh's /8 holds every one of those addresses, yet names only ky-anh's line
    assert directory.line_of("ky-anh", "10.20.30.40") == "primary"
    assert directory.line_of("ky-anh", "2001:db8:1::1") is None


# --- errors --------------------------------------------------------------------------------------------------

BAD = """\
province: ha-tinh
name: Hà Tĩnh
tema: []
communes:
  - slug: dong-loc
    name: Xã Đồng Lộc
    code: "1807"
    lines:
      - {name: primary, isp: VNPT, kind: fibre, egress: [203.0.113.10]}
      - {name: backup, isp: Viettel, kind: 4g, egress: [198.51.100.0/24, "300.1.2.3"]}
      - {name: primary, isp: FPT, kind: fiber, egress: [203.0.113.10/32]}
    contacts:
      - {name: Nguyễn Văn An}
      - {name: Trần Thị Bình, email: binh-at-example}
      - {name: Lê Văn Cường, telegram_chat_id: "chat 42"}
  - slug: cam-xuyen
    name: ""
    code: 18001
    lines:
      - {name: backup, isp: MobiFone, kind: 4g, egress: [198.51.100.0/24]}
  - slug: dong-loc
    name: Xã Đồng Lộc 2
    code: "18001"
    lines: []
  - slug: Ky Anh
    name: Xã Kỳ Anh
    lines:
      - {name: primary, isp: VNPT, kind: adsl, egress: [192.0.2.40]}
"""


def test_a_bad_directory_lists_every_error_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("directory.yaml").write_text(BAD, encoding="utf-8")
    with pytest.raises(DirectoryError) as refused:
        load_directory("directory.yaml")
    f = "directory.yaml"
    # (the slug hint is the shared one of every config: "display_name" is the agent config's key; here it is name:)
    assert [str(issue) for issue in refused.value.issues] == [
        f"{f}:3: unknown key 'tema' — did you mean 'team'?",
        f"{f}:7: communes[0].code: '1807' is not an administrative code (5 digits, e.g. 18073)",
        f"{f}:9: communes[0].lines[0].kind: 'fibre' should be 'fiber', 'adsl', 'vdsl', '4g', '5g', 'satellite', "
        "'leased' or 'other'",
        f"{f}:10: communes[0].lines[1].egress[1]: '300.1.2.3' is not an IP address or prefix (e.g. 203.0.113.7 or "
        "203.0.113.0/29)",
        f"{f}:11: communes[0].lines[2].name: line 'primary' is listed twice for this commune",
        f"{f}:11: communes[0].lines[2].egress[0]: 203.0.113.10/32 is already the egress of line 'primary' (line 9): "
        "within a commune an address must name one line",
        f"{f}:13: communes[0].contacts[0]: a contact needs at least one of email, telegram_chat_id, zalo_user_id",
        f"{f}:14: communes[0].contacts[1].email: 'binh-at-example' is not an email address",
        f"{f}:15: communes[0].contacts[2].telegram_chat_id: 'chat 42' is not a Telegram chat id (a number such as "
        "-1001234567890, or @channelname)",
        f"{f}:17: communes[1].name: must be printable text, not empty",
        # cam-xuyen's backup shares dong-loc's 4G pool 198.51.100.0/24: across communes that is no error
        f"{f}:21: communes[2].slug: slug 'dong-loc' is already used by communes[0] (line 5)",
        f"{f}:23: communes[2].code: code '18001' is already used by communes[1] (line 16)",  # 18001 unquoted there
        f"{f}:24: communes[2].lines: list at least one line (its primary)",
        f"{f}:25: communes[3].slug: 'Ky Anh' is not a valid identifier: use lowercase ASCII letters, digits, '-', '_' or "
        "'.' (e.g. dong-loc); put names with diacritics in display_name",
    ]


@pytest.mark.parametrize("text, expected", [
    ("", ["d.yaml:1: the file is empty or not a mapping: a directory needs province:, name: and communes:"]),
    ("# nothing yet\n", ["d.yaml:1: the file is empty or not a mapping: a directory needs province:, name: and "
                         "communes:"]),
    ("- dong-loc\n", ["d.yaml:1: the file is empty or not a mapping: a directory needs province:, name: and "
                      "communes:"]),
    ("province: ha-tinh\nname: Hà Tĩnh\ncommunes: []\n", ["d.yaml:3: communes: list at least one commune"]),
    ("province: ha-tinh\nname: Hà Tĩnh\n", ["d.yaml:1: missing required key 'communes'"]),
])
def test_an_empty_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                                       expected: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    Path("d.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(DirectoryError) as refused:
        load_directory("d.yaml")
    assert [str(issue) for issue in refused.value.issues] == expected


def test_a_missing_directory_file_is_one_issue(tmp_path: Path) -> None:
    with pytest.raises(DirectoryError) as refused:
        load_directory(tmp_path / "nowhere.yaml")
    assert len(refused.value.issues) == 1 and "nowhere.yaml" in str(refused.value.issues[0])


def test_names_are_nfc_normalised(tmp_path: Path) -> None:
    composed = "Xã Đồng Lộc"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed and len(decomposed) > len(composed)  # what some keyboards and editors type
    path = tmp_path / "directory.yaml"
    path.write_text(f"province: ha-tinh\nname: {unicodedata.normalize('NFD', 'Hà Tĩnh')}\ncommunes:\n"
                    f"  - slug: dong-loc\n    name: '  {decomposed} '\n"
                    "    lines: [{name: primary, isp: VNPT, kind: fiber}]\n"
                    f"    contacts: [{{name: {unicodedata.normalize('NFD', 'Nguyễn Văn An')}, email: an@example.vn}}]\n",
                    encoding="utf-8")
    directory = load_directory(path)
    assert directory.commune("dong-loc").name == composed == load_directory(EXAMPLE).commune("dong-loc").name
    assert directory.file.name == "Hà Tĩnh"
    assert directory.commune("dong-loc").contacts[0].name == "Nguyễn Văn An"
    assert directory.commune("dong-loc").lines[0].egress == []  # no egress: the line is never named by address


def test_an_unquoted_code_with_leading_zeros(tmp_path: Path) -> None:
    path = tmp_path / "directory.yaml"
    path.write_text("province: ha-noi\nname: Hà Nội\ncommunes:\n  - slug: phuc-xa\n    name: Phường Phúc Xá\n"
                    "    code: 00001\n    lines: [{name: primary, isp: VNPT, kind: fiber}]\n", encoding="utf-8")
    try:
        assert load_directory(path).commune("phuc-xa").code == "00001"
    except DirectoryError as exc:  # refused is fine too, when the message shows what was written and says to quote it
        assert "00001" in str(exc) and "quote" in str(exc)


def test_an_egress_written_ipv4_mapped(tmp_path: Path) -> None:
    path = tmp_path / "directory.yaml"
    path.write_text("province: ha-tinh\nname: Hà Tĩnh\ncommunes:\n  - slug: dong-loc\n    name: Xã Đồng Lộc\n"
                    "    lines:\n      - {name: primary, isp: VNPT, kind: fiber, egress: ['::ffff:203.0.113.10']}\n",
                    encoding="utf-8")
    directory = load_directory(path)
    assert [directory.line_of("dong-loc", a) for a in ("203.0.113.10", "::ffff:203.0.113.10")] == ["primary"] * 2


# --- the collector config's `directory:` -------------------------------------------------------------------------

def _collector_yaml(folder: Path, directory: str, province: str = "ha-tinh") -> Path:
    path = folder / "collector.yaml"
    path.write_text(f"""\
province: {province}
data_dir: state
listen: {{allow_http: true}}
database: {{url: "http://127.0.0.1:8428"}}
directory: {directory}
""", encoding="utf-8")
    return path


def test_a_collector_config_with_a_good_directory_resolves_its_path(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "directory.yaml")
    config = load_config(_collector_yaml(tmp_path, "directory.yaml"))
    assert config.directory == str(tmp_path / "directory.yaml")
    assert load_directory(config.directory).province == config.province


def test_a_missing_directory_file_is_an_issue_on_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _collector_yaml(tmp_path, "nowhere.yaml")
    with pytest.raises(CollectorConfigError) as refused:
        load_config("collector.yaml")
    assert [str(issue) for issue in refused.value.issues] == [
        f"collector.yaml:5: directory: file not found: {tmp_path}/nowhere.yaml (a relative path is relative to the "
        "config file's folder)"]


def test_a_directory_of_another_province_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(EXAMPLE, tmp_path / "directory.yaml")
    _collector_yaml(tmp_path, "directory.yaml", province="quang-binh")
    with pytest.raises(CollectorConfigError) as refused:
        load_config("collector.yaml")
    assert [str(issue) for issue in refused.value.issues] == [
        f"collector.yaml:5: directory: {tmp_path}/directory.yaml is the directory of province 'ha-tinh', not of "
        "'quang-binh'"]


def _bad_directory_issues(tmp_path: Path) -> tuple[str, list[str]]:
    """Write BAD beside a collector config; return the collector's issue and the directory's own issues."""
    (tmp_path / "directory.yaml").write_text(BAD, encoding="utf-8")
    with pytest.raises(DirectoryError) as own:
        load_directory(tmp_path / "directory.yaml")
    head = f"collector.yaml:5: directory: {tmp_path}/directory.yaml has {len(own.value.issues)} error(s), listed after this one"
    return head, [str(issue) for issue in own.value.issues]


def test_a_directory_with_errors_lists_them_with_its_own_file_and_lines(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    head, own = _bad_directory_issues(tmp_path)
    assert len(own) == 14 and own[0] == f"{tmp_path}/directory.yaml:3: unknown key 'tema' — did you mean 'team'?"
    _collector_yaml(tmp_path, "directory.yaml")
    with pytest.raises(CollectorConfigError) as refused:
        load_config("collector.yaml")
    listed = [str(issue) for issue in refused.value.issues]
    assert sorted(listed) == sorted([head, *own])  # every one of the directory's, with its file and line
    assert [i for i in listed if i.startswith(str(tmp_path))] == own  # in the directory's order


def test_the_directory_issue_comes_before_the_directorys_own(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    head, own = _bad_directory_issues(tmp_path)
    _collector_yaml(tmp_path, "directory.yaml")
    with pytest.raises(CollectorConfigError) as refused:
        load_config("collector.yaml")
    assert [str(issue) for issue in refused.value.issues] == [head, *own]


def test_create_app_refuses_a_directory_with_errors(tmp_path: Path) -> None:
    (tmp_path / "directory.yaml").write_text(BAD, encoding="utf-8")
    config = parse_config({**config_dict(tmp_path, NO_VM), "directory": str(tmp_path / "directory.yaml")})
    with pytest.raises(DirectoryError) as refused:
        create_app(config)
    assert len(refused.value.issues) == 14
    assert str(refused.value.issues[-1]).startswith(f"{tmp_path}/directory.yaml:25: communes[3].slug: 'Ky Anh'")


# --- commune states (pure) -----------------------------------------------------------------------------------

def _row(commune: str, agent: str, seen_s_ago: float | None, state: str | None = "running") -> dict:
    return {"commune": commune, "agent": agent, "state": state,
            "last_seen_ms": None if seen_s_ago is None else NOW - int(seen_s_ago * 1000)}


@pytest.mark.parametrize("rows, state", [
    ([], "no_data"),
    ([_row("x", "a", None, None)], "no_data"),                                  # enrolled, never heard
    ([_row("x", "a", 10)], "reporting"),
    ([_row("x", "a", SILENT_AFTER_S)], "reporting"),                            # the bound is still reporting
    ([_row("x", "a", SILENT_AFTER_S + 1)], "silent"),
    ([_row("x", "a", 10, "stopping")], "stopped"),                              # switched off: not an outage
    ([_row("x", "a", 10, "stopping"), _row("x", "b", 9999, "stopping")], "stopped"),
    ([_row("x", "a", 9999), _row("x", "b", 99999)], "silent"),
    ([_row("x", "a", 9999), _row("x", "b", 10)], "reporting"),                  # one recent agent is enough
    ([_row("x", "a", 10, "stopping"), _row("x", "b", 10)], "reporting"),
    ([_row("x", "a", 10, "stopping"), _row("x", "b", 9999)], "silent"),         # one stopped, one gone quiet
    ([_row("x", "a", 10, "stopping"), _row("x", "b", None, None)], "stopped"),  # never-heard agents do not count
])
def test_commune_state(rows: list[dict], state: str) -> None:
    assert commune_state(rows, NOW) == state


def test_commune_state_takes_the_silence_threshold() -> None:
    rows = [_row("x", "a", 60)]
    assert (commune_state(rows, NOW, silent_after_s=30), commune_state(rows, NOW, silent_after_s=90)) == \
        ("silent", "reporting")


def test_communes_lists_the_directory_in_order_then_the_unlisted() -> None:
    directory = load_directory(EXAMPLE)
    rows = [_row("thanh-sen", "quay-02", 10), _row("thanh-sen", "quay-01", 9999), _row("cam-xuyen", "pc", 20,
            "stopping"), _row("ky-anh", "pc", 600), _row("zz-new", "pc", 5), _row("aa-typo", "pc", 9999)]
    listed = communes(directory, rows, NOW)
    assert [(c["commune"], c["state"], c["agents"], c["last_seen_ms"]) for c in listed] == [
        ("dong-loc", "no_data", [], None),
        ("thanh-sen", "reporting", ["quay-01", "quay-02"], NOW - 10_000),
        ("cam-xuyen", "stopped", ["pc"], NOW - 20_000),
        ("ky-anh", "silent", ["pc"], NOW - 600_000),
        ("aa-typo", "unlisted", ["pc"], NOW - 9_999_000),  # unlisted ones by slug, whatever their state
        ("zz-new", "unlisted", ["pc"], NOW - 5_000),
    ]
    assert listed[0] == {"commune": "dong-loc", "name": "Xã Đồng Lộc", "code": "18073", "state": "no_data",
                         "agents": [], "last_seen_ms": None, "lines": [
                             {"name": "primary", "isp": "VNPT", "kind": "fiber", "metered": False},
                             {"name": "backup", "isp": "Viettel", "kind": "4g", "metered": True}]}
    assert listed[-1] == {"commune": "zz-new", "name": None, "code": None, "state": "unlisted", "agents": ["pc"],
                          "last_seen_ms": NOW - 5_000, "lines": []}


def test_communes_without_a_directory_lists_every_reporting_commune_with_its_state() -> None:
    rows = [_row("thanh-sen", "a", 10), _row("dong-loc", "a", 9999), _row("cam-xuyen", "a", 1, "stopping"),
            _row("ky-anh", "a", None, None)]
    assert [(c["commune"], c["state"], c["name"], c["lines"]) for c in communes(None, rows, NOW)] == [
        ("cam-xuyen", "stopped", None, []), ("dong-loc", "silent", None, []), ("ky-anh", "no_data", None, []),
        ("thanh-sen", "reporting", None, [])]
    assert communes(None, [], NOW) == []


# --- GET /api/v1/communes on a real collector app -----------------------------------------------------------------

async def _communes(client) -> dict[str, dict]:
    async with client.get("/api/v1/communes") as response:
        assert response.status == 200
        return {c["commune"]: c for c in (await response.json())["communes"]}


async def test_the_communes_endpoint_tells_no_data_reporting_and_unlisted(tmp_path: Path) -> None:
    config = parse_config({**config_dict(tmp_path, NO_VM), "directory": str(EXAMPLE)})
    async with collector_client(config) as client:
        before = await _communes(client)
        assert list(before) == ["dong-loc", "thanh-sen", "cam-xuyen", "ky-anh"]
        assert {slug: (c["state"], c["agents"]) for slug, c in before.items()} == {
            slug: ("no_data", []) for slug in before}
        assert before["thanh-sen"]["name"] == "Phường Thành Sen"

        cred = credential(client, commune="dong-loc", agent="quay-01")
        status, _, _ = await post(client, cred, {"version": 1, "state": "running"}, path="/api/v1/heartbeat")
        assert status == 200
        after = await _communes(client)
        assert {slug: (c["state"], c["agents"]) for slug, c in after.items()} == {
            "dong-loc": ("reporting", ["quay-01"]), "thanh-sen": ("no_data", []), "cam-xuyen": ("no_data", []),
            "ky-anh": ("no_data", [])}
        assert after["dong-loc"]["last_seen_ms"] is not None

        other = credential(client, commune="huong-son", agent="pc-01")
        assert (await post(client, other, {"version": 1, "state": "running"}, path="/api/v1/heartbeat"))[0] == 200
        listed = await _communes(client)
        assert list(listed)[-1] == "huong-son"
        assert {k: listed["huong-son"][k] for k in ("state", "agents", "name", "lines")} == {
            "state": "unlisted", "agents": ["pc-01"], "name": None, "lines": []}

        status, _, _ = await post(client, cred, {"version": 1, "state": "stopping"}, path="/api/v1/heartbeat")
        assert status == 200 and (await _communes(client))["dong-loc"]["state"] == "stopped"


async def test_the_communes_endpoint_without_a_directory(tmp_path: Path) -> None:
    async with collector_client(parse_config(config_dict(tmp_path, NO_VM))) as client:
        assert await _communes(client) == {}
        cred = credential(client, commune="dong-loc", agent="quay-01")
        assert (await post(client, cred, {"version": 1, "state": "running"}, path="/api/v1/heartbeat"))[0] == 200
        assert {slug: c["state"] for slug, c in (await _communes(client)).items()} == {"dong-loc": "reporting"}


# --- cmon check-config and cmon collector token create ----------------------------------------------------------

def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_check_config_summarises_the_example_directory(capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert run(capsys, "check-config", "configs/directory-example.yaml") == (
        0, "configs/directory-example.yaml: OK — directory of province ha-tinh (Hà Tĩnh): 4 communes, 7 lines\n", "")


def test_check_config_lists_a_bad_directorys_issues(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("directory.yaml").write_text(BAD, encoding="utf-8")
    with pytest.raises(DirectoryError) as own:
        load_directory("directory.yaml")
    status, out, err = run(capsys, "check-config", "directory.yaml")
    assert (status, out) == (2, "")
    assert err.splitlines() == [str(issue) for issue in own.value.issues] + ["directory.yaml: 14 errors"]


def _token_config(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLE, tmp_path / "directory.yaml")
    return _collector_yaml(tmp_path, "directory.yaml")


def test_token_create_refuses_a_commune_not_in_the_directory(tmp_path: Path, capsys) -> None:
    path = _token_config(tmp_path)
    status, out, err = run(capsys, "collector", "token", "create", "-c", str(path), "--commune", "dong-lok")
    assert (status, out) == (2, "")
    assert err == (f"cmon collector token create: commune 'dong-lok' is not in the province directory "
                   f"{tmp_path}/directory.yaml — did you mean 'dong-loc'?: add it there first (a commune the "
                   "directory does not list would never be told apart from one that stopped reporting)\n")
    assert not (tmp_path / "state" / "collector.sqlite").exists()  # refused before the state file is opened


def test_token_create_prints_a_token_for_a_commune_of_the_directory(tmp_path: Path, capsys) -> None:
    (tmp_path / "state").mkdir()
    path = _token_config(tmp_path)
    status, out, err = run(capsys, "collector", "token", "create", "-c", str(path), "--commune", "dong-loc")
    assert status == 0 and len(out.strip().splitlines()) == 1 and len(out.strip()) >= 20
    assert "one-time token for ha-tinh/dong-loc" in err
    from collector.auth import Auth
    from collector.db import connect, migrate

    conn = connect(tmp_path / "state" / "collector.sqlite")
    try:
        migrate(conn)
        identity = Auth(conn, "ha-tinh").enroll(out.strip(), "quay-01")[1]  # the printed token enrolls
        assert (identity.commune, identity.agent) == ("dong-loc", "quay-01")
    finally:
        conn.close()


def test_token_create_without_a_directory_takes_any_commune(tmp_path: Path, capsys) -> None:
    (tmp_path / "state").mkdir()
    path = tmp_path / "collector.yaml"
    path.write_text("province: ha-tinh\ndata_dir: state\nlisten: {allow_http: true}\n"
                    "database: {url: 'http://127.0.0.1:8428'}\n", encoding="utf-8")
    assert run(capsys, "collector", "token", "create", "-c", str(path), "--commune", "dong-lok")[0] == 0

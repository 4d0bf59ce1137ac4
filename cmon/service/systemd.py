"""The Linux back-end: a hardened systemd unit running `cmon agent run` (or `cmon collector run`) unprivileged.

`install` renders cmon/service/systemd/<unit>.service, writes it to /etc/systemd/system (mode 0644), makes the
config dir /etc/commune-monitor (0750, group `cmon`, so the service reads its config and credential but cannot
change them), creates the system user `cmon` when asked, and checks that the config's spool (the collector's
`data_dir`) lands in the state dir, the only place ProtectSystem=strict lets the service write. `systemctl daemon-reload` and `enable --now`
run only when systemd is PID 1; otherwise (a container, a chroot, an image being built, a `root=` other than
`/`) the report says what to run. `root=` installs into another tree, as packaging and the tests do.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
from pathlib import Path
from string import Template
from typing import Callable

from .report import Report, ServiceError

UNITS = {"agent": "commune-monitor-agent.service", "collector": "commune-monitor-collector.service"}
STATE_DIRS = {"agent": "/var/lib/commune-monitor", "collector": "/var/lib/commune-monitor-collector"}
CONFIG_DIR = "/etc/commune-monitor"
UNIT_DIR = "/etc/systemd/system"
USER = "cmon"
TEMPLATES = Path(__file__).parent / "systemd"
_PROTECTED_HOMES = ("/home", "/root", "/run/user")  # hidden by ProtectHome=yes
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")

Runner = Callable[..., subprocess.CompletedProcess]


def render(role: str, *, config: str, python: str, user: str = USER) -> str:
    """Return the unit file for `role` with the interpreter, config path and user filled in."""
    if not _USER_NAME.fullmatch(user):
        raise ServiceError(f"{user!r} is not a valid user name (lower-case letters, digits, _ and -)")
    template = Template((TEMPLATES / UNITS[role]).read_text(encoding="utf-8"))
    return template.substitute(python=_exec_arg(python), config=_exec_arg(config), user=user)


def _exec_arg(value: str) -> str:
    """Quote one ExecStart argument: systemd expands % specifiers and $VARIABLES, and splits on spaces."""
    if "\n" in value:
        raise ServiceError(f"a path with a newline cannot go in a unit file: {value!r}")
    escaped = value.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_booted(root: str | Path = "/") -> bool:
    """Return True when systemd is PID 1 on this machine and `root` is this machine (sd_booted's test)."""
    return Path(root) == Path("/") and Path("/run/systemd/system").is_dir()


def install(config_path: str, *, role: str = "agent", root: str | Path = "/", create_user: bool = False,
            user: str = USER, python: str | None = None, start: bool = True,
            run: Runner = subprocess.run) -> Report:
    """Install the unit for `role` running `config_path` (a path on the target system); see the module doc."""
    root = Path(root)
    config = Path(config_path) if Path(config_path).is_absolute() else Path.cwd() / config_path
    python = python or str(Path(sys.executable).absolute())  # not resolved: a venv's python is a symlink
    unit = UNITS[role]
    report = Report()
    if not _host(root, config).is_file():
        raise ServiceError(f"{config}: no such config file; write it first (start from "
                           f"configs/commune-example.yaml), then run `cmon service install -c {config}`")
    text = render(role, config=str(config), python=python, user=user)

    ids = _ids(root, user)
    if ids is None and create_user:
        _add_user(root, user, STATE_DIRS[role], run)
        ids = _ids(root, user)
        report.done.append(f"created system user {user}")
    if ids is None:
        report.warnings.append(f"user {user} does not exist: the service cannot start until it does "
                               f"(rerun without --no-create-user, or: useradd --system --user-group {user})")

    config_dir = _host(root, Path(CONFIG_DIR))
    config_dir.mkdir(parents=True, exist_ok=True)
    if ids:
        os.chown(config_dir, 0, ids[1])
    config_dir.chmod(0o750)
    report.done.append(f"config dir {CONFIG_DIR} (root:{user if ids else 'root'}, 0750)")

    unit_file = _host(root, Path(UNIT_DIR) / unit)
    unit_file.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(unit_file, text, 0o644)
    report.done.append(f"wrote {UNIT_DIR}/{unit}")

    report.warnings += _path_warnings(root, config, python, role, user, ids)
    commands = [["systemctl", "daemon-reload"], ["systemctl", "enable", *(["--now"] if start else []), unit]]
    _systemctl(root, commands, report, run)
    if systemd_booted(root):
        report.todo.append(f"journalctl -u {unit} -f   # follow its log")
    return report


def uninstall(*, role: str = "agent", root: str | Path = "/", run: Runner = subprocess.run) -> Report:
    """Stop, disable and remove the unit; keep the config, the state dir (unsent measurements) and the user."""
    root = Path(root)
    unit = UNITS[role]
    report = Report()
    unit_file = _host(root, Path(UNIT_DIR) / unit)
    if systemd_booted(root) and unit_file.exists():
        _run(["systemctl", "disable", "--now", unit], report, run)
    wants = _host(root, Path(UNIT_DIR) / "multi-user.target.wants" / unit)
    for path in (wants, unit_file):  # the enable symlink too: systemctl cannot remove it when systemd is down
        if path.is_symlink() or path.exists():
            path.unlink()
            report.done.append(f"removed {'/' / path.relative_to(root)}")
    if systemd_booted(root):
        _run(["systemctl", "daemon-reload"], report, run)
    config_dir = _host(root, Path(CONFIG_DIR))
    if config_dir.is_dir() and not any(config_dir.iterdir()):
        config_dir.rmdir()
        report.done.append(f"removed the empty {CONFIG_DIR}")
    state = STATE_DIRS[role]
    report.done.append(f"kept {CONFIG_DIR} (config, credential), {state} (the spool: measurements not yet sent) and "
                       f"user {USER}; to remove them too: rm -r {state}; userdel {USER}")
    return report


def status(*, role: str = "agent", root: str | Path = "/", run: Runner = subprocess.run) -> Report:
    """Report whether the unit is installed, enabled and active."""
    root = Path(root)
    unit = UNITS[role]
    report = Report()
    if not _host(root, Path(UNIT_DIR) / unit).exists():
        report.state = "not installed"
        return report
    report.done.append(f"installed: {UNIT_DIR}/{unit}")
    if not systemd_booted(root):
        report.state = "unknown (systemd is not running here)"
        return report
    active = run(["systemctl", "is-active", unit], capture_output=True, text=True).stdout.strip()
    enabled = run(["systemctl", "is-enabled", unit], capture_output=True, text=True).stdout.strip()
    report.state = f"{active or 'unknown'}, {enabled or 'unknown'}"
    report.todo.append(f"journalctl -u {unit} -n 50   # its recent log")
    return report


def _host(root: Path, path: Path) -> Path:
    """Return where a path of the target system is in the tree at `root`."""
    return root / path.relative_to("/") if path.is_absolute() else root / path


def _target(root: Path, path: Path) -> Path:
    """Return a host path as the target system sees it (the inverse of _host)."""
    return Path("/") / path.relative_to(root) if root != Path("/") and path.is_relative_to(root) else path


def _ids(root: Path, user: str) -> tuple[int, int] | None:
    """Return (uid, gid) of `user` on the target system, or None when it has no such user."""
    if root == Path("/"):
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            return None
        return entry.pw_uid, entry.pw_gid
    passwd = root / "etc" / "passwd"
    for line in passwd.read_text(encoding="utf-8").splitlines() if passwd.exists() else ():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == user:
            return int(fields[2]), int(fields[3])
    return None


def _add_user(root: Path, user: str, home: str, run: Runner) -> None:
    """Create a locked system user and its group, with no home directory made and no login shell."""
    command = ["useradd", "--system", "--user-group", "--home-dir", home, "--no-create-home",
               "--shell", "/usr/sbin/nologin", "--comment", "commune-monitor service", user]
    if root != Path("/"):
        command[1:1] = ["--prefix", str(root)]  # edits root/etc/passwd, without chroot
    result = run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ServiceError(f"could not create user {user}: {' '.join(command)}: {result.stderr.strip()}")


def _write_atomic(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` via a temporary file and rename, so a crash leaves the old or the new unit."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.chmod(mode)
    os.replace(temporary, path)


def _systemctl(root: Path, commands: list[list[str]], report: Report, run: Runner) -> None:
    """Run the systemctl commands when systemd is PID 1 here; otherwise tell the operator to run them."""
    if systemd_booted(root):
        for command in commands:
            _run(command, report, run)
        return
    why = "systemd is not PID 1 here" if root == Path("/") else f"installed into {root}, not this system"
    report.warnings.append(f"not started: {why}; on the target system (booted with systemd) run the commands below")
    report.todo += [" ".join(command) for command in commands]


def _run(command: list[str], report: Report, run: Runner) -> None:
    """Run one systemctl command; a failure becomes a warning with systemd's message."""
    result = run(command, capture_output=True, text=True)
    if result.returncode == 0:
        report.done.append(" ".join(command))
    else:
        report.warnings.append(f"{' '.join(command)} failed: {result.stderr.strip() or result.returncode}")


def _path_warnings(root: Path, config: Path, python: str, role: str, user: str,
                   ids: tuple[int, int] | None) -> list[str]:
    """Return what in the config or the interpreter's location the hardened service could not use."""
    warnings = [
        f"{what} {path} is under {home}, which ProtectHome=yes hides from the service: move it (e.g. "
        f"{'/opt/commune-monitor' if what == 'interpreter' else CONFIG_DIR})"
        for what, path in (("interpreter", python), ("config", str(config)))
        for home in _PROTECTED_HOMES if path == home or path.startswith(home + "/")
    ]
    if role == "agent":
        warnings += _agent_warnings(root, config, user, ids)
    else:
        warnings += _collector_warnings(root, config)
    return warnings


def _collector_warnings(root: Path, config: Path) -> list[str]:
    """Check that the collector's state (`data_dir`) is in its state dir, the only place it may write."""
    from collector.config import CollectorConfigError, load_config

    try:
        loaded = load_config(_host(root, config))
    except CollectorConfigError as exc:
        return [f"{config} has {len(exc.issues)} error(s): run `cmon check-config {config}`"]
    state = Path(STATE_DIRS["collector"])
    data_dir = _target(root, Path(loaded.data_dir))
    if data_dir.is_relative_to(state):
        return []
    return [f"the collector's state (data_dir) would be in {data_dir}, which the service cannot write "
            f"(ProtectSystem=strict): set `data_dir: {state}` in {config}"]


def _agent_warnings(root: Path, config: Path, user: str, ids: tuple[int, int] | None) -> list[str]:
    """Check that the agent's spool is in the state dir and its credential readable by the service user."""
    from agent.config import ConfigError, load_config  # loads the probe modules: only when installing an agent

    try:
        loaded = load_config(_host(root, config))
    except ConfigError as exc:
        return [f"{config} has {len(exc.issues)} error(s): run `cmon check-config {config}`"]
    warnings = []
    state = Path(STATE_DIRS["agent"])
    spool = _target(root, Path(loaded.spool.path))
    if not spool.is_relative_to(state):
        warnings.append(f"the spool would be {spool}, which the service cannot write (ProtectSystem=strict): "
                        f"set `spool: {{path: {state}/spool.db}}` in {config}")
    if loaded.collector is None:
        warnings.append(f"{config} has no collector: section: the agent will only spool")
        return warnings
    credential = _target(root, loaded.credential_path)
    on_host = _host(root, credential)
    if not on_host.exists():
        warnings.append(f"no credential yet at {credential}: enroll (docs/install.md), then "
                        f"chown {user}:{user} {credential}")
    elif ids and on_host.stat().st_uid != ids[0]:
        warnings.append(f"{credential} is not owned by the service user, which cannot read it (mode 0600): "
                        f"chown {user}:{user} {credential}")
    return warnings

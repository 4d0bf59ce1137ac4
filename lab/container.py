"""A Debian tree booted as a container with systemd as PID 1, for tests of the service units (tests/system).

    reason = unavailable()                    # None, or why not (a skip reason): root, debootstrap, nspawn
    tree = cached_tree()                      # debootstrap once; cached by the package list
    with Container(tree, workdir, binds=[binary, (checkout, "/opt/src")], veth=Veth.for_owner("10.251.0.1/30")) as box:
        box.boot()                            # systemd-nspawn --boot; waits for `systemctl is-system-running`
        box.run(["systemctl", "is-active", "x"])   # nsenter into the container's init: every namespace
        box.reboot()                          # `systemctl reboot` inside, then boot the same tree again
    # closed: the container is powered off (killed if it does not stop), the veth and its bridge deleted, the
    # overlay unmounted; also at exit and on SIGTERM/SIGHUP. sweep() removes what a SIGKILLed owner left.

The tree is built by `debootstrap --variant=minbase` (systemd, dbus, python3 ...) from the apt mirror this host
uses, into /var/cache/commune-monitor-test/<suite>-<hash of the package list>, once: about 45 s, then free. It
stays pristine: each Container boots an overlay of it (upper layer in `workdir`), so a container's changes
survive its reboots and vanish with it. `systemd-nspawn --register=no --keep-unit` because this host has no
system bus (no machined, no transient scope); `--private-network` gives the container its own network namespace,
with only the Veth's peer end in it when one is given (moved in as soon as the container's init exists, before
its network is configured; made again for every boot: it dies with the container's namespace). A bind is a host
path, mounted read-only at the same path inside, or (host path, path inside). Needs root.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lab import _install_signal_cleanup

SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "iproute2", "procps", "libcap2-bin")
CACHE = Path("/var/cache/commune-monitor-test")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
TREE_FORMAT = 1  # bump when what is done to a fresh tree changes: the cache key changes with it
_COMPLETE = ".commune-monitor-tree-complete"
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
       "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
NSPAWN_REBOOTED = 133  # systemd-nspawn's exit status when the container rebooted (systemd-nspawn(1))
NAME = "cmon-test-{owner}"  # the machine; the veth pair is cmt<owner>h / cmt<owner>c and the bridge cmt<owner>hb
_OWNER_FILE = "owner"


class ContainerError(RuntimeError):
    """The tree could not be built or the container could not boot (the message carries the log's tail)."""


def unavailable() -> str | None:
    """Return None when a container can be booted here, else why not (a skip reason)."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, an overlay mount, systemd-nspawn)"
    missing = [tool for tool, package in (("debootstrap", "debootstrap"), ("systemd-nspawn", "systemd-container"),
                                          ("nsenter", "util-linux"), ("ip", "iproute2"))
               if not shutil.which(tool)]
    if missing:
        return f"{', '.join(missing)} not installed (scripts/setup.sh installs debootstrap and systemd-container)"
    if "overlay" not in Path("/proc/filesystems").read_text() and \
            subprocess.run(["modprobe", "overlay"], capture_output=True).returncode != 0:
        return "the kernel has no overlay file system"
    return None


def mirror(suite: str = SUITE) -> str:
    """Return the Debian mirror this host's apt uses for `suite` (sources.list or deb822 .sources), else the default."""
    files = [Path("/etc/apt/sources.list")]
    directory = Path("/etc/apt/sources.list.d")
    if directory.is_dir():
        files += sorted(directory.iterdir())
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith(("#", " ")):
                        key, value = line.split(":", 1)
                        fields[key.strip().lower()] = value.split()
                if ("deb" in fields.get("types", []) and suite in fields.get("suites", [])
                        and "main" in fields.get("components", []) and fields.get("uris")):
                    return fields["uris"][0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 4 and words[0] == "deb" and words[2] == suite and "main" in words[3:]:
                    return words[1]
    return DEFAULT_MIRROR


def tree_key(suite: str = SUITE, packages: Sequence[str] = PACKAGES) -> str:
    """Return the cache name of the tree for `suite` with `packages` (the same list: the same tree)."""
    digest = hashlib.sha256(f"{TREE_FORMAT} {suite} minbase {' '.join(sorted(packages))}".encode()).hexdigest()
    return f"{suite}-{digest[:12]}"


def cached_tree(cache: Path = CACHE, suite: str = SUITE, packages: Sequence[str] = PACKAGES,
                timeout: float = 1200.0) -> Path:
    """Return a debootstrapped tree for `suite` + `packages`, building it first when the cache has none."""
    final = cache / tree_key(suite, packages)
    if (final / _COMPLETE).exists():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building the same tree: wait for it
        if (final / _COMPLETE).exists():
            return final
        if final.exists():  # a build that died after the rename cannot happen; anything else there is stale
            _remove_tree(final)
        build = cache / f".build-{final.name}-{os.getpid()}"
        if build.exists():
            _remove_tree(build)
        log = cache / f"{final.name}.log"
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(build),
                   mirror(suite)]
        try:
            with open(log, "wb") as out:
                result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        timeout=timeout)
            if result.returncode != 0:
                raise ContainerError(f"{' '.join(command)} failed ({result.returncode}): "
                                     f"{_tail(log)}\n(full log: {log})")
            (build / _COMPLETE).write_text(" ".join(command) + "\n")
            os.rename(build, final)
        finally:
            if build.exists():
                _remove_tree(build)
    return final


@dataclass
class Veth:
    """A veth pair: `peer` goes into the container (same name there); `host` stays here, in the bridge `bridge`,
    which holds `host_addr` (CIDR). The bridge outlives the container's reboots (the veth does not), so a
    server listening on `host_addr` here keeps its address while the container is down."""

    host: str
    peer: str
    host_addr: str
    bridge: str = ""

    @classmethod
    def for_owner(cls, host_addr: str, owner: int | None = None) -> "Veth":
        """The veth of the container of process `owner` (this one): names sweep() can tell."""
        owner = os.getpid() if owner is None else owner
        return cls(f"cmt{owner}h", f"cmt{owner}c", host_addr)

    def __post_init__(self) -> None:
        self.bridge = self.bridge or f"{self.host}b"
        for name in (self.host, self.peer, self.bridge):
            if len(name) > 15:
                raise ValueError(f"interface name {name!r} is longer than 15 characters")


class Container:
    """A booted overlay of `tree` (see the module doc); close() (or the context manager) removes every trace."""

    def __init__(self, tree: Path, workdir: Path, *,
                 binds: Sequence[str | Path | tuple[str | Path, str | Path]] = (),
                 veth: Veth | None = None) -> None:
        self.tree = Path(tree)
        self.workdir = Path(workdir)
        self.root = self.workdir / "root"
        self.owner = os.getpid()
        self.name = NAME.format(owner=self.owner)
        self.binds: list[tuple[str, str]] = []  # (host path, path inside), mounted read-only
        for bind in binds:
            source, target = (str(Path(bind[0])), str(Path(bind[1]))) if isinstance(bind, tuple) else \
                (str(Path(bind)),) * 2
            for path in (source, target):
                if ":" in path or "," in path:
                    raise ValueError(f"cannot bind {path!r} into a container (':' or ',' in the path)")
            if not Path(target).is_absolute():
                raise ValueError(f"cannot bind to {target!r} inside a container: not an absolute path")
            self.binds.append((source, target))
        self.veth = veth
        self.log = self.workdir / "console.log"
        self.nspawn: subprocess.Popen | None = None
        self.init_pid: int | None = None
        self._mounted = False
        self.boots: list[float] = []  # seconds from starting nspawn to a running system, per boot

    # -- life cycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mount(self) -> None:
        """Mount the overlay (the tree below, the container's changes in workdir/upper)."""
        if self._mounted:
            return
        for part in ("upper", "work", "root"):
            (self.workdir / part).mkdir(parents=True, exist_ok=True)
        (self.workdir / _OWNER_FILE).write_text(f"{self.owner}\n")  # sweep() removes it once this process is gone
        _install_signal_cleanup()  # SIGTERM/SIGHUP: SystemExit, so finally blocks and close() run
        atexit.register(self.close)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.tree},upperdir={self.workdir / 'upper'},workdir={self.workdir / 'work'}",
                        str(self.root)], check=True, capture_output=True, text=True)
        self._mounted = True

    def boot(self, timeout: float = 180.0) -> str:
        """Boot the container; return `systemctl is-system-running --wait` ("running", or "degraded")."""
        assert self.nspawn is None or self.nspawn.poll() is not None, "already running"
        self.mount()
        if self.veth:
            self._veth_up()
        command = ["systemd-nspawn", "-D", str(self.root), "--boot", "--register=no", "--keep-unit",
                   "--private-network", f"--machine={self.name}", "--console=read-only",
                   *(f"--bind-ro={source}" if source == target else f"--bind-ro={source}:{target}"
                     for source, target in self.binds)]
        started = time.monotonic()
        with open(self.log, "ab") as log:
            log.write(f"\n==== {' '.join(command)}\n".encode())
            self.nspawn = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                           start_new_session=True)
        self.init_pid = self._find_init(started + timeout)
        if self.veth:  # not --network-interface=: nspawn wants udev to have seen the link, and no udev runs here
            subprocess.run(["ip", "link", "set", self.veth.peer, "netns", str(self.init_pid)], check=True,
                           capture_output=True, text=True)
        state = ""
        while time.monotonic() < started + timeout:  # before systemd's socket exists systemctl cannot connect
            left = max(1.0, started + timeout - time.monotonic())
            try:
                state = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                                 timeout=left).stdout.strip()
            except subprocess.TimeoutExpired:
                break
            if state in ("running", "degraded") or self.nspawn.poll() is not None:
                break
            time.sleep(0.1)
        if state not in ("running", "degraded"):
            raise ContainerError(f"the container did not come up ({state!r}): {_tail(self.log)}")
        self.boots.append(time.monotonic() - started)
        return state

    def shutdown(self, how: str = "poweroff", timeout: float = 120.0) -> int:
        """`systemctl poweroff|reboot` inside; wait for systemd-nspawn to exit and return its status."""
        assert self.nspawn is not None and how in ("poweroff", "reboot")
        self.run(["systemctl", "--no-block", how], check=False, timeout=30)
        try:
            return self.nspawn.wait(timeout)
        finally:
            self.init_pid = None

    def reboot(self, timeout: float = 180.0) -> int:
        """Reboot (systemd-nspawn exits NSPAWN_REBOOTED) and boot the same tree again; return nspawn's status."""
        status = self.shutdown("reboot", timeout)
        self.boot(timeout)
        return status

    def close(self) -> None:
        """Power off (SIGKILL the container if it does not stop), delete the veth, unmount the overlay."""
        try:
            if self.nspawn is not None and self.nspawn.poll() is None:
                self.nspawn.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
                try:
                    self.nspawn.wait(60)
                except subprocess.TimeoutExpired:
                    if self.init_pid:  # killing a PID namespace's init kills everything in it
                        _kill(self.init_pid)
                    self.nspawn.kill()
                    self.nspawn.wait(30)
        finally:
            self.init_pid = None
            if self.veth:
                for link in (self.veth.host, self.veth.bridge):
                    if Path(f"/sys/class/net/{link}").exists():
                        subprocess.run(["ip", "link", "del", link], capture_output=True)
            if self._mounted:
                _unmount_under(self.root)
                self._mounted = False
            atexit.unregister(self.close)

    # -- inside -----------------------------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 60.0,
            user: str | None = None) -> subprocess.CompletedProcess:
        """Run `argv` in every namespace of the container (as `user` when given: setpriv, no PAM, no session)."""
        assert self.init_pid, "the container is not running"
        if user:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]
        result = subprocess.run(["nsenter", "-t", str(self.init_pid), "-a", "--", *argv], input=input,
                                capture_output=True, text=True, timeout=timeout, env=ENV)
        if check and result.returncode != 0:
            raise ContainerError(f"{' '.join(argv)} exited {result.returncode}: {result.stdout[-2000:]}"
                                 f"{result.stderr[-2000:]}")
        return result

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file of the container's tree (also while it is stopped)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        target.chmod(mode)

    # -- helpers ----------------------------------------------------------------------------------------------

    def _veth_up(self) -> None:
        veth = self.veth
        assert veth is not None
        commands = []
        if not Path(f"/sys/class/net/{veth.bridge}").exists():
            commands += [["ip", "link", "add", veth.bridge, "type", "bridge"],
                         ["ip", "addr", "add", veth.host_addr, "dev", veth.bridge],
                         ["ip", "link", "set", veth.bridge, "up"]]
        if Path(f"/sys/class/net/{veth.host}").exists():
            subprocess.run(["ip", "link", "del", veth.host], capture_output=True)
        commands += [["ip", "link", "add", veth.host, "type", "veth", "peer", "name", veth.peer],
                     ["ip", "link", "set", veth.host, "master", veth.bridge],
                     ["ip", "link", "set", veth.host, "up"]]
        for command in commands:
            subprocess.run(command, check=True, capture_output=True, text=True)

    def _find_init(self, deadline: float) -> int:
        """Return the host PID of the container's systemd: nspawn's child that is PID 1 of its namespace."""
        assert self.nspawn is not None
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited ({self.nspawn.returncode}): {_tail(self.log)}")
            for pid in _children(self.nspawn.pid):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                nspid = re.search(r"^NSpid:\s+(.*)$", status, re.M)
                if nspid and nspid.group(1).split()[-1] == "1" and \
                        Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return pid
            time.sleep(0.05)
        raise ContainerError(f"no systemd in the container before the deadline: {_tail(self.log)}")


def sweep(cache: Path = CACHE) -> list[str]:
    """Remove what the Containers of processes that died without close() left (SIGKILL): their systemd-nspawn and
    everything in the container, their overlay mounts, veths and bridges. Those of live processes stay."""
    removed = []
    for pid in _pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        owner = next((m.group(1) for a in argv if (m := re.fullmatch(r"--machine=cmon-test-(\d+)", a))), None)
        if not argv[0].endswith("systemd-nspawn") or owner is None or _alive(int(owner)):
            continue
        for child in _children(pid):  # the container's init: killing it kills its whole PID namespace
            _kill(child)
        _kill(pid)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        removed.append(f"container cmon-test-{owner} (systemd-nspawn {pid})")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] != "overlay" or f"lowerdir={cache}/" not in fields[3]:
            continue
        root = Path(fields[1].encode().decode("unicode_escape"))
        try:
            owner = int((root.parent / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            _unmount_under(root)
            removed.append(f"mount {root}")
    for link in sorted(os.listdir("/sys/class/net"), key=len):  # the veth before its bridge
        m = re.fullmatch(r"cmt(\d+)(h|hb)", link)
        if m and not _alive(int(m.group(1))) and Path(f"/sys/class/net/{link}").exists():
            subprocess.run(["ip", "link", "del", link], capture_output=True)
            removed.append(f"link {link}")
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _children(pid: int) -> list[int]:
    out = []
    for child in _pids():
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(child)
    return out


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def _unmount_under(path: Path) -> None:
    """Unmount everything at or below `path`, deepest first (lazily when busy)."""
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def _remove_tree(path: Path) -> None:
    """Remove a (partly) built tree: first whatever a failed debootstrap left mounted in it (/proc, /sys)."""
    _unmount_under(path)
    if _mounts_under(path):
        raise ContainerError(f"{path}: still mounted, not removed: {_mounts_under(path)}")
    shutil.rmtree(path, ignore_errors=True)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


__all__ = ["CACHE", "Container", "ContainerError", "NSPAWN_REBOOTED", "PACKAGES", "SUITE", "Veth", "cached_tree",
           "mirror", "sweep", "tree_key", "unavailable"]

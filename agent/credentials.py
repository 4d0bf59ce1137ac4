"""The agent's credential file: what `cmon agent enroll` received, readable only by the service account.

The file is JSON: `{"version": 1, "collector": URL, "credential": "...", "province": ..., "commune": ...,
"agent": ..., "ca_fingerprint": "sha256:<hex>" | null, "ca_pem": "<PEM>" | null}`. It is written atomically
(a temporary file, fsync, rename) and restricted BEFORE the secret is written: mode 0600 on POSIX, an ACL
granting only the owner, SYSTEM and Administrators on Windows (`_restrict_windows`, behind the one interface
`restrict(path)`).
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


class CredentialError(Exception):
    """The credential file is missing, unreadable or not what enrollment writes; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Credential:
    """What enrollment gave this agent."""

    collector: str
    credential: str
    province: str
    commune: str
    agent: str
    ca_fingerprint: str | None = None
    ca_pem: str | None = None


def restrict(path: Path) -> None:
    """Make `path` readable and writable by its owner only (the service account)."""
    if sys.platform == "win32":
        _restrict_windows(path)
    else:
        os.chmod(path, 0o600)


def _restrict_windows(path: Path) -> None:  # pragma: no cover - Windows only
    """Replace the file's ACL: full control for the owner, SYSTEM and Administrators; no inheritance."""
    import ntsecuritycon as con
    import win32api
    import win32security

    owner, _, _ = win32security.LookupAccountName("", win32api.GetUserName())
    system = win32security.CreateWellKnownSid(win32security.WinLocalSystemSid)
    admins = win32security.CreateWellKnownSid(win32security.WinBuiltinAdministratorsSid)
    dacl = win32security.ACL()
    for sid in (owner, system, admins):
        dacl.AddAccessAllowedAce(win32security.ACL_REVISION, con.FILE_ALL_ACCESS, sid)
    win32security.SetNamedSecurityInfo(
        str(path), win32security.SE_FILE_OBJECT,
        win32security.DACL_SECURITY_INFORMATION | win32security.PROTECTED_DACL_SECURITY_INFORMATION,
        None, None, dacl, None,
    )


def save(path: Path, credential: Credential) -> None:
    """Write the credential file atomically, restricted to the owner before the secret goes in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        restrict(tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump({"version": 1, **asdict(credential)}, file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(path: Path) -> Credential:
    """Read the credential file; CredentialError says what is wrong and how to fix it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data.pop("version", None)
        return Credential(**data)
    except FileNotFoundError:
        raise CredentialError(f"no credential file {path}: enroll first (cmon agent enroll --collector URL)") from None
    except PermissionError:
        raise CredentialError(f"cannot read {path}: run as the service account that enrolled") from None
    except (ValueError, TypeError) as exc:
        raise CredentialError(f"{path} is not a credential file ({exc}): enroll again") from None


def ssl_context(credential: Credential | None = None, ca_file: str | Path | None = None) -> ssl.SSLContext:
    """Return a TLS client context trusting the pinned province CA (else `ca_file`, else the system's CAs)."""
    if credential is not None and credential.ca_pem:
        return ssl.create_default_context(cadata=credential.ca_pem)
    if ca_file:
        return ssl.create_default_context(cafile=str(ca_file))
    return ssl.create_default_context()


__all__ = ["Credential", "CredentialError", "load", "restrict", "save", "ssl_context"]

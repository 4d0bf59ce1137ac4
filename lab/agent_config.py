"""The agent configuration for a running lab: configs/lab.yaml placed next to the lab's PKI."""

from __future__ import annotations

import shutil
from pathlib import Path

LAB_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "lab.yaml"


def write_agent_config(lab, source: Path = LAB_CONFIG) -> Path:
    """Copy `source` into the province folder of `lab` (its `ca_file: pki/...` paths resolve there); return it."""
    folder = Path(lab.workdir) / "province"
    if not (folder / "pki").is_dir():
        raise FileNotFoundError(f"the lab has no province PKI at {folder / 'pki'}: was it started with servers?")
    target = folder / source.name
    shutil.copyfile(source, target)
    return target

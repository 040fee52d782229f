"""Secrets for olol's processes: from a flag, a file, or a systemd credential."""

from __future__ import annotations

import os
from pathlib import Path


def read_secret(value: str | None, path: str | None, credential: str) -> str | None:
    """``value`` when given, else the contents of the file ``path``, else the systemd
    credential ``credential`` ($CREDENTIALS_DIRECTORY/<credential>) when present, else
    None. Surrounding whitespace is stripped.

    :raises ValueError: the file cannot be read or is empty.
    """
    if value:
        return value
    if path is None:
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        candidate = Path(creds) / credential if creds else None
        if candidate is None or not candidate.is_file():
            return None
        path = str(candidate)
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not text:
        raise ValueError(f"{path} is empty")
    return text

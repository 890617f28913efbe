"""Files that ship inside the package (targets in ``nas/constraints/``, spaces in ``nas/search_spaces/``).

One rule for both kinds: a path names the user's own file; a bare name (``mcu_vww`` or ``mcu_vww.yaml``)
finds the shipped one; an environment variable can point the shipped folder elsewhere. The folders are found
through ``importlib.resources``, so a wheel install finds them as well as a source checkout.
"""
from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

from nas.errors import UserError, did_you_mean

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml")


def folder(subfolder: str, env_var: str) -> Path:
    """``$env_var`` when it is set, else the package's own ``nas/<subfolder>/``."""
    override = os.environ.get(env_var)
    if override:
        return Path(override).expanduser()
    return Path(str(resources.files("nas") / subfolder))


def names(where: Path) -> list[str]:
    """The shipped files' names (stems), sorted; none when the folder is missing."""
    if not where.is_dir():
        return []
    return sorted(p.stem for p in where.iterdir() if p.suffix in SUFFIXES and p.is_file())


def resolve(name_or_path: str, where: Path, what: str) -> Path:
    """An existing file for ``name_or_path``: the path itself, else the shipped file of that bare name.

    ``what`` names the kind of file in the one-line error (``constraints``, ``search-space``).
    """
    text = str(name_or_path).strip()
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise UserError(text, "", f"a {what} YAML file, got a directory")
    if text and "/" not in text and os.sep not in text:
        for name in ([text] if text.endswith(SUFFIXES) else [text + s for s in SUFFIXES]):
            shipped = where / name
            if shipped.is_file():
                log.debug("%r resolved to shipped file %s", text, shipped)
                return shipped
    known = names(where)
    stem = path.name.rsplit(".", 1)[0] if text.endswith(SUFFIXES) else path.name
    raise UserError(text, "", f"an existing {what} file or a shipped name "
                              f"({', '.join(known) or f'none found in {where}'}); no such file"
                    + did_you_mean(stem, known))

"""Where a bundle is written, safely: bundle names that stay inside the output folder, an output folder that is
a folder, no overwriting without ``force``, assembly in a hidden temporary folder renamed into place at the
end (a crash leaves no half bundle), and the ``--zip`` file written the same way."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

from nas.errors import UserError


def _umask() -> int:
    """The process umask (reading it means setting it; it is put straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_out_dir(out_dir: Path | str, flag: str = "--out") -> Path:
    """``out_dir`` as a folder bundles can be written into: it, or its nearest existing parent, is a folder.

    Checked before any work so that ``--out`` naming an existing file is one line, not a traceback from
    ``mkdir`` once a model has been measured.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(str(out), flag, "a folder to write bundles into; this is an existing file")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not out.exists() and not parent.is_dir():
        raise UserError(str(out), flag, f"a folder to write bundles into; {parent} is an existing file")
    return out


def check_name(name: str, out_dir: Path, flag: str = "--name") -> Path:
    """The bundle folder for ``name``: a plain folder name that stays inside ``out_dir``.

    Rejects separators, ``..``, hidden names (our temporary folders are hidden) and anything that resolves
    outside ``out_dir`` (a symlink, say), so ``--name ../../x`` cannot write elsewhere.
    """
    text = str(name)
    bad = (not text or text in (".", "..") or text.startswith(".") or "/" in text or "\\" in text
           or "\x00" in text or os.sep in text or (os.altsep and os.altsep in text) or text != text.strip())
    if not bad:
        base = Path(out_dir).resolve()
        dest = (base / text).resolve()
        bad = dest.parent != base
    if bad:
        raise UserError(flag, "name", f"a plain folder name inside the output folder (letters, digits, '-', '_', "
                                      f"'.'; no '/', '..' or leading '.'), got {text!r}")
    return Path(out_dir) / text


@contextlib.contextmanager
def staged(dest: Path, force: bool) -> Iterator[Path]:
    """A hidden temporary folder next to ``dest`` that becomes ``dest`` only if the block finishes.

    With ``force`` an existing ``dest`` is moved aside first and deleted after the swap, so at every moment
    either the old or the new bundle is complete on disk.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield tmp
        old = None
        if dest.exists() or dest.is_symlink():
            if not force:
                raise UserError(str(dest), "--force", "a new bundle name: it appeared while exporting "
                                                      "(add --force to replace it)")
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / "bundle")
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a bundle is meant to be shared
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_destination(dest: Path, force: bool, zip_bundle: bool) -> None:
    """Refuse to overwrite a bundle (or its zip) without ``force``: checked before any work is done."""
    if (dest.exists() or dest.is_symlink()) and not force:
        raise UserError(str(dest), "--force", "a new bundle folder; it already exists (add --force to replace it)")
    if dest.exists() and not dest.is_dir():
        raise UserError(str(dest), "", "a folder for the bundle; a file has that name")
    zpath = dest.with_name(dest.name + ".zip")
    if zip_bundle and zpath.exists() and not force:
        raise UserError(str(zpath), "--force", "a new zip file; it already exists (add --force to replace it)")


def write_zip(bundle: Path) -> Path:
    """``BUNDLE.zip`` next to the bundle (files under ``BUNDLE/``), written to a temporary name then renamed."""
    zpath = bundle.with_name(bundle.name + ".zip")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{bundle.name}.zip.partial-", dir=bundle.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp_name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(bundle.rglob("*")):
                if path.is_file():
                    zf.write(path, f"{bundle.name}/{path.relative_to(bundle).as_posix()}")
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, zpath)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return zpath


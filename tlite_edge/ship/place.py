"""Put files in place safely: temporary name + rename, sha256 checked after copying, undo on failure."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from tlite_edge.errors import TliteError
from tlite_edge.fsutil import atomic_output, describe_os_error, publish, sha256_file, sidecar_path, temp_path
from tlite_edge.progress import byte_progress

LINKS = ("copy", "hardlink", "symlink")
CHUNK = 1 << 22


def sidecar_digest(src: Path) -> str | None:
    """The hash recorded in ``<file>.sha256`` (``sha256sum`` format), None when there is none."""
    sidecar = sidecar_path(src)
    if not sidecar.is_file():
        return None
    fields = sidecar.read_text(encoding="utf-8", errors="replace").split()
    if not fields or len(fields[0]) != 64:
        raise TliteError(sidecar, "not a sha256sum line")
    return fields[0].lower()


def _copy_hashing(src: Path, dst: Path) -> str:
    digest = hashlib.sha256()
    with (
        open(src, "rb") as fin,
        open(dst, "wb") as fout,
        byte_progress(f"copy {src.name}", src.stat().st_size) as advance,
    ):
        while block := fin.read(CHUNK):
            digest.update(block)
            fout.write(block)
            advance(len(block))
    return digest.hexdigest()


@dataclass
class Placer:
    """Creates folders and files, remembers what it created, and removes it all if a later step fails."""

    force: bool = False
    created: list[Path] = field(default_factory=list)

    def mkdirs(self, folder: Path) -> None:
        missing = []
        probe = folder
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except OSError as exc:
                raise TliteError(path, f"cannot create folder ({describe_os_error(exc)})") from None
            self.created.append(path)

    def _claim(self, dst: Path) -> None:
        if (dst.exists() or dst.is_symlink()) and not self.force:
            raise TliteError(dst, "already exists; pass --force to replace it")
        if not (dst.exists() or dst.is_symlink()):
            self.created.append(dst)

    def write_text(self, dst: Path, text: str) -> None:
        self.mkdirs(dst.parent)
        self._claim(dst)
        try:
            with atomic_output(dst) as fh:
                fh.write(text.encode("utf-8"))
        except OSError as exc:
            raise TliteError(dst, f"cannot write ({describe_os_error(exc)})") from None

    def place(self, src: Path, dst: Path, link: str) -> str:
        """Copy or link ``src`` to ``dst``; return the sha256 that was verified at ``dst``."""
        expected = sidecar_digest(src)
        self.mkdirs(dst.parent)
        self._claim(dst)
        tmp = temp_path(dst)
        try:
            if link == "copy":
                got = _copy_hashing(src, tmp)
                if expected and got != expected:
                    raise TliteError(src, f"sha256 {got} does not match its .sha256 sidecar ({expected})")
                publish(tmp, dst)
            else:
                tmp.unlink()
                if link == "hardlink":
                    os.link(src, tmp)
                else:
                    os.symlink(src.resolve(), tmp)
                os.replace(tmp, dst)
        except OSError as exc:
            why = describe_os_error(exc)
            if exc.errno == errno.EXDEV:
                why = "cannot hardlink across filesystems; use --link copy or symlink"
            raise TliteError(dst, why) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                if tmp.is_symlink() or tmp.exists():
                    tmp.unlink()
        digest = sha256_file(dst)
        reference = expected or (got if link == "copy" else sha256_file(src))
        if digest != reference:
            raise TliteError(dst, f"sha256 after placing is {digest}, expected {reference}")
        return digest

    def undo(self) -> None:
        """Remove what this placer created, newest first (folders only when empty)."""
        for path in reversed(self.created):
            with contextlib.suppress(OSError):
                if path.is_symlink() or path.is_file():
                    path.unlink()
                elif path.is_dir():
                    path.rmdir()
        self.created.clear()

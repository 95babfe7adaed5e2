"""Safe output: write to a temporary name in the target folder, fsync, rename; sha256 sidecars."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from tlite_edge.errors import TliteError

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def describe_os_error(exc: OSError) -> str:
    """A short, user-facing description of an OS error while writing."""
    if exc.errno in _DISK_FULL:
        return "disk full: no space left to write the output"
    return exc.strerror or str(exc)


def read_json(path: str | Path) -> Any:
    """A JSON file's value; missing, unreadable or not JSON is one ``TliteError`` naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TliteError(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TliteError(path, f"cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    except json.JSONDecodeError as exc:
        raise TliteError(path, f"not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


@contextlib.contextmanager
def atomic_output(
    path: str | Path,
    sidecar: Callable[[], str] | None = None,
    verify: Callable[[Path], Sequence[str]] | None = None,
) -> Iterator[BinaryIO]:
    """Yield a binary file that appears at ``path`` only if the block finishes without error; with
    ``sidecar`` (called at the end for the hex sha256) its ``.sha256`` file is published with it.
    ``verify`` gets the complete temporary file before it is renamed: it raises to keep nothing, or
    returns lines of evidence, written into the sidecar as ``#`` comments (``sha256sum -c`` skips them)."""
    target = Path(path)
    if target.is_dir():
        raise TliteError(target, "output path is a directory")
    if not target.parent.is_dir():
        raise TliteError(target.parent, "output folder does not exist")
    fd, tmp_name = _mkstemp(target)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as fh:
            yield fh
            fh.flush()
        notes = verify(tmp) if verify else ()
        publish(tmp, target, sidecar() if sidecar else None, notes)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TliteError(target, describe_os_error(exc)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_dirs(folder: Path) -> None:
    """Create an output folder and its parents (one clear line when that is not possible)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise TliteError(folder, "output folder path is a file") from None
    except OSError as exc:
        raise TliteError(folder, f"cannot create the output folder ({describe_os_error(exc)})") from None


def temp_path(target: Path) -> Path:
    """A fresh, empty temporary file next to ``target`` (same filesystem, so rename is atomic)."""
    fd, name = _mkstemp(target)
    os.close(fd)
    return Path(name)


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "host"


def _owner_tag() -> str:
    return f"{_host()}-{os.getpid()}"


def _mkstemp(target: Path) -> tuple[int, str]:
    """A temporary file ``.<name>.<host>-<pid>.<random>.partial`` next to ``target``, after removing
    the ones that killed runs (SIGKILL, power loss) of this host left for the same target."""
    sweep_stale(target)
    return tempfile.mkstemp(prefix=f".{target.name}.{_owner_tag()}.", suffix=".partial", dir=target.parent)


def sweep_stale(target: Path) -> list[Path]:
    """Remove temporary files for ``target`` whose writer (same host, by pid) is no longer running."""
    removed = []
    host = _host()
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.partial"):
        owner = tmp.name[len(target.name) + 2 :].split(".", 1)[0]
        tag_host, _, pid = owner.rpartition("-")
        if tag_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_holding = False


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them (a file and its sidecar are
    published as one step). Nested, or off the main thread, the block just runs."""
    global _holding
    if _holding or threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    # a handler of None was set outside Python and cannot be restored: leave that signal alone
    old = {s: h for s in (signal.SIGINT, signal.SIGTERM) if (h := signal.getsignal(s)) is not None}
    for sig in old:
        signal.signal(sig, lambda signum, frame: held.append(signum))
    _holding = True
    try:
        yield
    finally:
        _holding = False
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if held:
            signal.raise_signal(held[0])


def publish(tmp: Path, target: Path, digest: str | None = None, notes: Sequence[str] = ()) -> None:
    """fsync ``tmp``, then commit it at ``target`` (see ``_commit``)."""
    _fsync_file(tmp)
    _commit(tmp, target, digest, notes)


def _commit(tmp: Path, target: Path, digest: str | None, notes: Sequence[str] = ()) -> None:
    """As one step that Ctrl-C and SIGTERM wait for: give the synced ``tmp`` normal permissions, rename it
    to ``target``, fsync the folder and (given ``digest``) write the ``.sha256`` sidecar."""
    with interrupts_held():
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if digest:
            write_sha256_sidecar(target, digest, notes)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in bounded chunks."""
    with open(path, "rb") as fh:
        return sha256_stream(fh, chunk)


def sha256_stream(fh: BinaryIO, chunk: int = 1 << 22) -> str:
    """Hex sha256 of an open binary file from its current position to the end."""
    digest = hashlib.sha256()
    while block := fh.read(chunk):
        digest.update(block)
    return digest.hexdigest()


def hash_and_publish(tmp: Path, target: Path) -> str:
    """sha256 ``tmp`` while it is fsynced (the hash reads the page cache on a second thread, overlapping
    the disk flush), then publish it at ``target`` with its sidecar; return the hex digest."""
    with open(tmp, "rb") as fh, ThreadPoolExecutor(1) as pool:
        digest = pool.submit(sha256_stream, fh)
        _fsync_file(tmp)
        hexdigest = digest.result()
    _commit(tmp, target, hexdigest)
    return hexdigest


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_sha256_sidecar(path: str | Path, hexdigest: str | None = None, notes: Sequence[str] = ()) -> Path:
    """Write ``<file>.sha256`` in ``sha256sum`` format next to ``path``, then ``notes`` as ``#`` comment
    lines (what was proved about the file); return the sidecar path."""
    target = Path(path)
    hexdigest = hexdigest or sha256_file(target)
    sidecar = sidecar_path(target)
    lines = [f"{hexdigest}  {target.name}", *(f"# {note}" for note in notes)]
    with atomic_output(sidecar) as fh:
        fh.write(("\n".join(lines) + "\n").encode())
    return sidecar


def sidecar_notes(path: Path) -> list[str]:
    """The ``#`` comment lines of ``<file>.sha256`` (empty when there is none)."""
    try:
        text = sidecar_path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line[1:].strip() for line in text.splitlines() if line.startswith("#")]

"""Faults during convert and quantize: SIGINT/SIGTERM/SIGKILL mid-write and a full disk never leave a
file under the final name; temporary files go away (after SIGKILL: on the next run); a rerun succeeds."""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import STANDIN_NAME
from hostile_kit import leftovers, run_bounded

from tlite_edge import fsutil
from tlite_edge.fsutil import sha256_file

BF16_NAME = f"{STANDIN_NAME}-BF16.gguf"
Q8_NAME = f"{STANDIN_NAME}-Q8_0.gguf"


def command(verb: str, standin_dir: Path, bf16_gguf: Path, out: Path) -> tuple[list[str], str]:
    """argv and the final file name of one convert or quantize run into ``out``."""
    if verb == "convert":
        return ["convert", str(standin_dir), "--out-dir", str(out)], BF16_NAME
    return ["quantize", str(bf16_gguf), "-q", "q8_0", "--out-dir", str(out)], Q8_NAME


def interrupt_mid_write(argv: list[str], out: Path, sig: signal.Signals, delay: float) -> tuple[int, str]:
    """Start the CLI, wait until its temporary output exists, signal it ``delay`` seconds later.
    Returns (exit code, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlite_edge", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUTF8": "1"},
        # a shell that starts us in the background (CI) ignores SIGINT, and children inherit that:
        # give the CLI the default disposition a terminal user's Ctrl-C meets
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not leftovers(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
@pytest.mark.parametrize("verb", ["convert", "quantize"])
def test_interrupted_mid_write(
    verb: str, sig: signal.Signals, standin_dir: Path, bf16_gguf: Path, tmp_path: Path
) -> None:
    """A signal mid-write leaves nothing under the final name. One that races the end (the file is being
    published, or the run is over) may leave the file, but only whole: with its sidecar, the bytes of a
    clean run. Ctrl-C and SIGTERM always end in one line, exit 130, no temporary file."""
    rng = random.Random(f"{verb}{sig}")
    out = tmp_path / "out"
    out.mkdir()
    argv, final = command(verb, standin_dir, bf16_gguf, out)
    raced: set[str] = set()  # sha256 of files a late signal left under the final name
    tries = 0
    while True:  # until the signal lands while the output is being written: shorter delays each try
        tries += 1
        code, err = interrupt_mid_write(argv, out, sig, rng.uniform(0.0, 0.6) / 2 ** (tries - 1))
        published = (out / final).exists()
        if published:
            digest = sha256_file(out / final)
            raced.add(digest)
            if sig != signal.SIGKILL or code == 0:  # only SIGKILL can cut between the file and its sidecar
                assert (out / f"{final}.sha256").read_text().split()[0] == digest
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL or (published and code == 0), err
        elif not (published and code in (0, -sig)):  # else the run was over: the signal met it exiting
            assert code == 130, err
            assert err.strip().splitlines() == [f"tlite-edge {verb}: interrupted"], err
            assert leftovers(out) == [], "temporary file left after a clean interrupt"
        landed = not published
        if landed or tries == 8:
            break
        for p in out.iterdir():
            p.unlink()
    assert landed, f"{sig.name} never landed mid-write in {tries} tries"
    print(f"{verb} {sig.name}: landed mid-write after {tries} tries")
    rerun = run_bounded(*argv)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / final).is_file()
    sidecar = (out / f"{final}.sha256").read_text().split()[0]
    assert sidecar == sha256_file(out / final)
    assert raced <= {sidecar}, "a signal during publishing left a file that differs from a clean run's"
    assert leftovers(out) == [], "stale temporary files of the killed run were not swept"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_signal_while_publishing_waits_for_the_sidecar(
    sig: signal.Signals, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C or SIGTERM arriving just as the file is renamed into place is held until its sidecar is
    written too, then delivered: the file is whole and verifiable, and the run still stops."""

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, terminate), signal.signal(signal.SIGINT, signal.default_int_handler)
    real_replace = os.replace
    signalled: list[str] = []

    def replace_under_signal(src: str, dst: str) -> None:
        if not signalled:
            signalled.append(str(dst))
            os.kill(os.getpid(), sig)  # delivered to Python at once, unless held
        real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", replace_under_signal)
    target = tmp_path / "model.gguf"
    try:
        with pytest.raises(KeyboardInterrupt), fsutil.atomic_output(target, lambda: "ab" * 32) as fh:
            fh.write(b"GGUF whole")
    finally:
        signal.signal(signal.SIGTERM, old[0])
        signal.signal(signal.SIGINT, old[1])
    assert signalled and target.read_bytes() == b"GGUF whole"
    assert (tmp_path / "model.gguf.sha256").read_text() == f"{'ab' * 32}  model.gguf\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "model.gguf.sha256"]
    assert signal.getsignal(signal.SIGTERM) is old[0] and signal.getsignal(signal.SIGINT) is old[1]


def _fsize_limit(nbytes: int) -> callable:
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG, like ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return limit


def assert_disk_full(result, out: Path, final: str) -> None:  # noqa: ANN001
    assert result.returncode == 2, result.stderr
    assert len(result.lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "disk full" in result.lines[0] and final in result.lines[0], result.lines[0]
    assert list(out.iterdir()) == [], sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("limit", [4096, 40 * 2**20], ids=["in-header", "in-data"])
@pytest.mark.parametrize("verb", ["convert", "quantize"])
def test_file_size_limit(verb: str, limit: int, standin_dir: Path, bf16_gguf: Path, tmp_path: Path) -> None:
    """A real failed write from the OS (RLIMIT_FSIZE: EFBIG), at the start and in the middle."""
    out = tmp_path / "out"
    out.mkdir()
    argv, final = command(verb, standin_dir, bf16_gguf, out)
    assert_disk_full(run_bounded(*argv, preexec=_fsize_limit(limit)), out, final)


@pytest.fixture
def small_fs(tmp_path: Path):  # noqa: ANN201
    """A 24 MiB tmpfs (a genuinely full disk: ENOSPC); skipped where mounting is not allowed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; RLIMIT_FSIZE covers the same path")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("verb", ["convert", "quantize"])
def test_no_space_left(verb: str, standin_dir: Path, bf16_gguf: Path, small_fs: Path) -> None:
    argv, final = command(verb, standin_dir, bf16_gguf, small_fs)
    result = run_bounded(*argv)
    assert_disk_full(result, small_fs, final)

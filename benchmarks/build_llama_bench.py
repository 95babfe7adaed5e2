"""Build llama.cpp's ``llama-bench`` from the sources vendored in the installed llama-cpp-python's sdist.

A benchmark set-up step (minutes on two cores), run once: the binary is cached and later runs print its
path at once. CMake, Release, CPU backend, target ``llama-bench`` only, static libraries, nothing
downloaded by CMake (no curl/OpenSSL, no web UI). The sdist is the one the converter tests use
(``tests/llamacpp_convert.py``): ``$TLITE_LLAMACPP_SDIST`` or ``pip download`` of the installed version.

    python benchmarks/build_llama_bench.py            # prints the binary's path
    python benchmarks/build_llama_bench.py --jobs 2 --cache bench-data/llama-bench

Only the binary and a stamp are kept (``<cache>/llama-bench-<version>/``); the extracted sources and the
build tree are deleted afterwards (``--keep-build`` keeps them, for rebuilding with other flags).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from llamacpp_convert import LlamacppConvertError, find_sdist, llamacpp_version  # noqa: E402

from tlite_edge.runtime.hardware import NO_AMX  # noqa: E402
from tlite_edge.samples.smollm2 import cache_root  # noqa: E402

BINARY = "llama-bench"
STAMP = "build.json"
# Parts of vendor/llama.cpp a CPU build of llama-bench never reads (~130 MB of the ~210 MB).
SKIP = {".git", ".github", "docs", "models", "media", "benches", "gguf-py", "conversion", "tests", "scripts"}
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DGGML_METAL=OFF",
    "-DGGML_CUDA=OFF",
    "-DGGML_VULKAN=OFF",
)
# as the README builds llama-cpp-python: no AMX kernels on x86-64 (they crashed on an AMX-capable VM)
if platform.machine().lower() in ("x86_64", "amd64"):
    CMAKE_FLAGS += (f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}")


def extract(sdist: Path, version: str, dest: Path) -> Path:
    """vendor/llama.cpp of ``sdist`` (regular files, paths checked, ``SKIP`` left out) into ``dest``."""
    root = PurePosixPath(f"llama_cpp_python-{version}", "vendor", "llama.cpp")
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            path = PurePosixPath(member.name)
            if not member.isfile() or root not in path.parents:
                continue
            rel = path.relative_to(root)
            if ".." in rel.parts or rel.parts[0] in SKIP:
                continue
            out = dest.joinpath(*rel.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            with src, open(out, "wb") as fh:
                shutil.copyfileobj(src, fh)
            out.chmod(member.mode & 0o755 | 0o644)
    if not (dest / "tools" / BINARY / "llama-bench.cpp").is_file():
        raise LlamacppConvertError(f"{sdist}: no tools/{BINARY}/llama-bench.cpp under {root}/")
    return dest


def build(src: Path, build_dir: Path, jobs: int, extra: list[str], log: Path) -> Path:
    """Configure and build target ``llama-bench``; returns the binary. Output goes to ``log``."""
    steps = [
        ["cmake", "-S", str(src), "-B", str(build_dir), *CMAKE_FLAGS, *extra],
        ["cmake", "--build", str(build_dir), "--target", BINARY, "-j", str(jobs)],
    ]
    with open(log, "w", encoding="utf-8") as fh:
        for cmd in steps:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
            if rc != 0:
                tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
                raise LlamacppConvertError(f"{cmd[0]} {cmd[1]} failed (rc {rc}), log {log}:\n{tail}")
    binary = build_dir / "bin" / BINARY
    if not binary.is_file():
        raise LlamacppConvertError(f"the build made no {binary}")
    return binary


def _stamped_flags(stamp: Path) -> list[str] | None:
    return json.loads(stamp.read_text(encoding="utf-8")).get("cmake_flags")


def llama_bench(
    cache: Path, *, jobs: int = 2, extra: Sequence[str] = (), force: bool = False, keep: bool = False
) -> Path:
    """The cached ``llama-bench`` for the installed llama-cpp-python, built first if missing."""
    version = llamacpp_version()
    home = cache / f"{BINARY}-{version}"
    binary, stamp = home / BINARY, home / STAMP
    flags = [*CMAKE_FLAGS, *extra]
    if not force and binary.is_file() and stamp.is_file() and _stamped_flags(stamp) == flags:
        return binary
    home.mkdir(parents=True, exist_ok=True)
    sdist, downloaded = find_sdist(cache, version)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=home))
    t0 = time.perf_counter()
    try:
        print(f"extracting llama.cpp {version} from {sdist.name}", file=sys.stderr)
        src = extract(sdist, version, work / "src")
        print(f"building {BINARY} with {jobs} jobs (log {work / 'build.log'})", file=sys.stderr)
        built = build(src, work / "build", jobs, list(extra), work / "build.log")
        tmp = home / f".{BINARY}.tmp"
        shutil.copy2(built, tmp)
        tmp.replace(binary)
        info = {"llama_cpp_python": version, "cmake_flags": flags, "build_seconds": time.perf_counter() - t0}
        stamp.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    finally:
        if keep:
            print(f"sources and build tree kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
        if downloaded:
            sdist.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                sdist.parent.rmdir()
    return binary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, help="where to keep the binary (default: tlite-edge's cache)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile jobs")
    ap.add_argument("--cmake-arg", action="append", default=[], help="an extra CMake flag (repeatable)")
    ap.add_argument("--force", action="store_true", help="rebuild even if a binary is cached")
    ap.add_argument("--keep-build", action="store_true", help="keep the extracted sources and build tree")
    args = ap.parse_args()
    cache = args.cache or cache_root()
    try:
        binary = llama_bench(
            cache, jobs=args.jobs, extra=args.cmake_arg, force=args.force, keep=args.keep_build
        )
    except LlamacppConvertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(binary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What this machine offers llama.cpp: physical cores, RAM, SIMD features, backends and devices."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# CPU flags in llama.cpp's system info that are build options, not instruction sets.
BUILD_FLAGS = frozenset({"LLAMAFILE", "OPENMP", "REPACK", "ACCELERATE", "KLEIDIAI", "AARCH64_REPACK"})
# enum ggml_backend_dev_type
DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}
# macOS vm_stat page kinds that count as available
MAC_AVAILABLE_PAGES = ("Pages free", "Pages inactive", "Pages speculative", "Pages purgeable")


@dataclass(frozen=True)
class Device:
    """A ggml backend device (CPU, GPU, ...) with its memory as the backend reports it."""

    name: str
    description: str
    type: str
    memory_free: int
    memory_total: int


@dataclass
class Hardware:
    physical_cores: int
    logical_cpus: int
    usable_cpus: int  # CPUs this process may run on (affinity, containers)
    ram_total: int
    ram_available: int
    system_info: dict[str, dict[str, str]]
    gpu_offload: bool
    backends: list[str]
    devices: list[Device] = field(default_factory=list)

    @property
    def threads(self) -> int:
        """Threads for llama.cpp: physical cores, never more than the CPUs this process may use."""
        return max(1, min(self.physical_cores, self.usable_cpus))

    @property
    def cpu_features(self) -> dict[str, bool]:
        return {k: v == "1" for k, v in self.system_info.get("CPU", {}).items()}

    @property
    def simd(self) -> list[str]:
        return [k for k, on in self.cpu_features.items() if on and k not in BUILD_FLAGS]

    def gpu_devices(self) -> list[Device]:
        """This machine's GPUs (llama.cpp lists RPC workers as GPUs too: they are not counted)."""
        return [d for d in self.devices if d.type in ("gpu", "igpu") and not d.name.startswith("RPC")]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(threads=self.threads, simd=self.simd, cpu_features=self.cpu_features)
        return out


# ---- cores -------------------------------------------------------------------------------------


# llama.cpp's AMX kernels stopped with an illegal instruction on an AMX-capable VM: x86-64 builds leave
# them out (README, Install).
NO_AMX = "-mno-amx-int8"


def rebuild_command(backend_flags: str = "-DGGML_RPC=on") -> str:
    """The pip command that rebuilds llama-cpp-python with ``backend_flags`` as the README builds it."""
    flags = backend_flags
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags += f" -DCMAKE_C_FLAGS={NO_AMX} -DCMAKE_CXX_FLAGS={NO_AMX}"
    return f'CMAKE_ARGS="{flags}" pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python'


def _cores_from_cpuinfo(text: str) -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; 0 when it does not say."""
    cores: set[tuple[str, str]] = set()
    for block in text.split("\n\n"):
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in block.splitlines())
        )
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores)


def _cores_from_sysfs(root: Path = Path("/sys/devices/system/cpu")) -> int:
    """Distinct sibling sets in sysfs topology (ARM boards often lack 'core id' in cpuinfo)."""
    sets = set()
    for cpu in root.glob("cpu[0-9]*/topology"):
        for name in ("core_cpus_list", "thread_siblings_list"):
            f = cpu / name
            if f.is_file():
                sets.add(f.read_text().strip())
                break
    return len(sets)


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def physical_cores() -> int:
    """Physical cores (hyper-threads not counted); os.cpu_count() when the OS does not say."""
    n = 0
    if sys.platform == "darwin":
        n = int(_sysctl("hw.physicalcpu") or 0)
    elif Path("/proc/cpuinfo").is_file():
        n = _cores_from_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace")) or _cores_from_sysfs()
    return n or os.cpu_count() or 1


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ---- memory ------------------------------------------------------------------------------------


def parse_meminfo(text: str) -> tuple[int, int]:
    """(total, available) bytes from /proc/meminfo text."""
    kb = {}
    for line in text.splitlines():
        m = re.match(r"(\w+):\s+(\d+)", line)
        if m:
            kb[m.group(1)] = int(m.group(2)) * 1024
    available = kb.get("MemAvailable", kb.get("MemFree", 0) + kb.get("Cached", 0))
    return kb.get("MemTotal", 0), available


def _mac_memory() -> tuple[int, int]:
    total = int(_sysctl("hw.memsize") or 0)
    try:
        text = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return total, total
    page = int(m.group(1)) if (m := re.search(r"page size of (\d+)", text)) else 4096
    pages = {k.strip(): int(v) for k, v in re.findall(r"^([^:\n]+):\s+(\d+)\.?$", text, re.M)}
    return total, sum(pages.get(k, 0) for k in MAC_AVAILABLE_PAGES) * page


def memory() -> tuple[int, int]:
    """(total, available) RAM in bytes; (0, 0) when the OS does not say."""
    if sys.platform == "darwin":
        return _mac_memory()
    if Path("/proc/meminfo").is_file():
        return parse_meminfo(Path("/proc/meminfo").read_text())
    if hasattr(os, "sysconf"):
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError):
            pass
    return 0, 0


# ---- llama.cpp ---------------------------------------------------------------------------------


def parse_system_info(text: str) -> dict[str, dict[str, str]]:
    """``"CUDA : ARCHS = 890 | CPU : SSE3 = 1 | AVX = 1 | "`` -> {"CUDA": {...}, "CPU": {...}}."""
    sections: dict[str, dict[str, str]] = {}
    current = sections.setdefault("", {})
    for item in (x.strip() for x in text.split("|")):
        if not item:
            continue
        head, colon, rest = item.partition(" : ")
        if colon:
            current = sections.setdefault(head.strip(), {})
            item = rest.strip()
        key, eq, value = item.partition("=")
        current[key.strip()] = value.strip() if eq else ""
    return {k: v for k, v in sections.items() if k or v}


@functools.lru_cache(maxsize=1)
def _libggml() -> ctypes.CDLL | None:
    """llama-cpp-python's libggml (the backend registry lives there), None when not found.

    The soname first: a wheel holds libggml.so, .so.0 and .so.0.x as three copies of one file, and
    only the one libllama links (libggml.so.0) shares llama.cpp's device registry (RPC workers)."""
    import llama_cpp

    lib_dir = Path(str(llama_cpp.__file__)).parent / "lib"
    names = ("libggml.so.0", "libggml.so", "libggml.0.dylib", "libggml.dylib", "ggml.dll", "libggml.dll")
    path = next((lib_dir / n for n in names if (lib_dir / n).exists()), None)
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    ptr, cstr, size = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
    signatures = {
        "ggml_backend_reg_count": (size, []),
        "ggml_backend_reg_get": (ptr, [size]),
        "ggml_backend_reg_name": (cstr, [ptr]),
        "ggml_backend_dev_count": (size, []),
        "ggml_backend_dev_get": (ptr, [size]),
        "ggml_backend_dev_name": (cstr, [ptr]),
        "ggml_backend_dev_description": (cstr, [ptr]),
        "ggml_backend_dev_type": (ctypes.c_int, [ptr]),
        "ggml_backend_dev_memory": (None, [ptr, ctypes.POINTER(size), ctypes.POINTER(size)]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def backends_and_devices(info: dict[str, dict[str, str]]) -> tuple[list[str], list[Device]]:
    """Registered ggml backends and their devices; the system-info sections when ggml is unreachable."""
    try:
        lib = _libggml()
    except (OSError, AttributeError):
        lib = None
    if lib is None:
        return list(info), []
    backends = [
        lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)).decode()
        for i in range(lib.ggml_backend_reg_count())
    ]
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        devices.append(
            Device(
                lib.ggml_backend_dev_name(dev).decode(errors="replace"),
                (lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "other"),
                free.value,
                total.value,
            )
        )
    return backends, devices


def probe() -> Hardware:
    """Everything above in one object (cheap: no model is loaded)."""
    import llama_cpp

    llama_cpp.llama_backend_init()
    info = parse_system_info(llama_cpp.llama_print_system_info().decode(errors="replace"))
    backends, devices = backends_and_devices(info)
    total, available = memory()
    # llama_supports_gpu_offload() is also true for a CPU build with the RPC backend: count devices
    local_gpu = any(d.type in ("gpu", "igpu") and not d.name.startswith("RPC") for d in devices)
    return Hardware(
        physical_cores=physical_cores(),
        logical_cpus=os.cpu_count() or 1,
        usable_cpus=usable_cpus(),
        ram_total=total,
        ram_available=available,
        system_info=info,
        gpu_offload=local_gpu if devices else bool(llama_cpp.llama_supports_gpu_offload()),
        backends=backends,
        devices=devices,
    )

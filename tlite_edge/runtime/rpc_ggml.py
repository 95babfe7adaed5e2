"""llama.cpp's RPC backend through ctypes: register workers as devices, run a worker, catch aborts.

Everything goes through the backend registry of the libggml that llama-cpp-python ships
(``ggml_backend_reg_by_name("RPC")`` and its ``get_proc_address``, as llama.cpp's own tools do), so
no separate binary or library name is needed. The signatures are those of ggml-rpc.h and
ggml-backend.h in llama-cpp-python 0.3.36; ``struct ggml_backend_device`` (ggml-backend-impl.h) is
mirrored for the worker's memory report (``--mem``) and checked against the library before use.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable, Sequence

import llama_cpp

from tlite_edge.errors import TliteError
from tlite_edge.runtime.hardware import _libggml, memory, rebuild_command
from tlite_edge.runtime.rpc import Endpoint, WorkerInfo, probe

CHECKED_LLAMA_CPP = "0.3.36"  # the release whose headers these signatures were read from
REBUILD = (
    "this llama-cpp-python was built without llama.cpp's RPC backend; rebuild it with: "
    f"{rebuild_command()}=={CHECKED_LLAMA_CPP}"
)
EXIT_WORKER_LOST = 3  # exit code of a process whose RPC connection broke (llama.cpp would abort())
DEVICE_GPU, DEVICE_CPU = 1, 0  # enum ggml_backend_dev_type
DEVICE_IFACE_SLOTS = 15  # function pointers in struct ggml_backend_device_i
GET_MEMORY_SLOT = 2  # its .get_memory

_ptr, _size = ctypes.c_void_p, ctypes.c_size_t
MemoryFn = ctypes.CFUNCTYPE(None, _ptr, ctypes.POINTER(_size), ctypes.POINTER(_size))
AbortFn = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
StartServerFn = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, _size, _size, ctypes.POINTER(_ptr))
AddServerFn = ctypes.CFUNCTYPE(_ptr, ctypes.c_char_p)


class BackendDevice(ctypes.Structure):
    """``struct ggml_backend_device``: the interface (function pointers), its registry, its context."""

    _fields_ = [("iface", _ptr * DEVICE_IFACE_SLOTS), ("reg", _ptr), ("context", _ptr)]


_KEEP: list[object] = []  # callbacks and proxy devices llama.cpp holds pointers to
_REGISTERED: dict[Endpoint, list[int]] = {}  # endpoint -> its devices, registered once per process


def _lib() -> ctypes.CDLL:
    if llama_cpp.__version__ != CHECKED_LLAMA_CPP:
        raise TliteError(
            None,
            f"llama-cpp-python {llama_cpp.__version__} is installed; the RPC binding was checked against "
            f"{CHECKED_LLAMA_CPP} (pip install llama-cpp-python=={CHECKED_LLAMA_CPP})",
        )
    lib = _libggml()
    if lib is None:
        raise TliteError(None, "llama-cpp-python's libggml was not found")
    signatures = {
        "ggml_backend_reg_by_name": (_ptr, [ctypes.c_char_p]),
        "ggml_backend_reg_get_proc_address": (_ptr, [_ptr, ctypes.c_char_p]),
        "ggml_backend_reg_dev_count": (_size, [_ptr]),
        "ggml_backend_reg_dev_get": (_ptr, [_ptr, _size]),
        "ggml_backend_device_register": (None, [_ptr]),
        "ggml_backend_dev_by_type": (_ptr, [ctypes.c_int]),
        "ggml_set_abort_callback": (_ptr, [AbortFn]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def require_rpc() -> int:
    """The RPC backend's registry entry, or the one-line rebuild instruction."""
    reg = _lib().ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise TliteError(None, REBUILD)
    return reg


def rpc_function(name: str, kind: type) -> Callable:
    """A function of the RPC backend by name (``kind``: its CFUNCTYPE)."""
    address = _lib().ggml_backend_reg_get_proc_address(require_rpc(), name.encode())
    if not address:
        raise TliteError(None, f"llama.cpp's RPC backend has no {name}: {REBUILD}")
    return kind(address)


def has_rpc() -> bool:
    try:
        require_rpc()
        return True
    except TliteError:
        return False


def on_abort(handler: Callable[[str], None]) -> None:
    """Run ``handler(message)`` then exit with EXIT_WORKER_LOST where llama.cpp would abort()
    (a lost worker: ggml-rpc.cpp aborts on any broken connection; there is no error return)."""

    def aborted(message: bytes | None) -> None:
        try:
            handler((message or b"").decode(errors="replace").strip())
        finally:
            os._exit(EXIT_WORKER_LOST)

    callback = AbortFn(aborted)
    _KEEP.append(callback)
    _lib().ggml_set_abort_callback(callback)


def register_workers(endpoints: Sequence[Endpoint]) -> list[WorkerInfo]:
    """Probe every worker (one line for one that is down), then add each as llama.cpp devices that
    models loaded afterwards spread their layers over. Returns what each worker reported."""
    add_server = rpc_function("ggml_backend_rpc_add_server", AddServerFn)
    infos = [probe(ep) for ep in endpoints]  # before llama.cpp connects: it aborts on a dead worker
    lib = _lib()
    for info in infos:
        if info.endpoint in _REGISTERED:
            continue
        reg = add_server(str(info.endpoint).encode())
        if not reg:
            raise TliteError(None, f"RPC worker {info.endpoint} offers no device")
        devices = [lib.ggml_backend_reg_dev_get(reg, i) for i in range(lib.ggml_backend_reg_dev_count(reg))]
        for dev in devices:
            lib.ggml_backend_device_register(dev)
        _REGISTERED[info.endpoint] = devices
    return infos


def _cap_memory(dev: int, mem: int | None) -> int:
    """Make device ``dev`` report ``mem`` bytes free (None: the RAM really available, for a CPU device
    whose own report calls all RAM free). The RPC server reports what the device's ``get_memory``
    says, so its slot in the device's interface is replaced, in this process only (a worker)."""
    lib = _lib()
    device = BackendDevice.from_address(dev)
    name_fn = ctypes.CFUNCTYPE(ctypes.c_char_p, _ptr)(device.iface[0])
    real = MemoryFn(device.iface[GET_MEMORY_SLOT])
    if name_fn(dev) != lib.ggml_backend_dev_name(dev):  # the mirror does not match this ggml
        raise TliteError(None, f"ggml's device layout differs from llama-cpp-python {CHECKED_LLAMA_CPP}'s")
    is_cpu = lib.ggml_backend_dev_type(dev) == DEVICE_CPU

    def get_memory(_dev: int, free: ctypes.Array, total: ctypes.Array) -> None:
        real(dev, free, total)
        if mem is not None:
            free[0] = min(total[0] if is_cpu else free[0], mem)
        elif is_cpu:
            free[0] = min(free[0], memory()[1] or free[0])

    callback = MemoryFn(get_memory)
    _KEEP.extend((callback, real))
    device.iface[GET_MEMORY_SLOT] = ctypes.cast(callback, _ptr).value
    return dev


def worker_devices(mem: int | None) -> list[int]:
    """What a worker offers: the GPU devices when the build has them, else the CPU."""
    lib = _lib()
    gpus = [lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count())]
    gpus = [d for d in gpus if lib.ggml_backend_dev_type(d) == DEVICE_GPU]
    devices = gpus or [lib.ggml_backend_dev_by_type(DEVICE_CPU)]
    return [_cap_memory(d, mem) for d in devices]


def device_memory(dev: int) -> tuple[int, int]:
    free, total = _size(), _size()
    _lib().ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    return free.value, total.value


def run_worker(endpoint: Endpoint, devices: list[int], *, threads: int, cache_dir: str | None) -> None:
    """llama.cpp's RPC server on ``endpoint`` until Ctrl-C/SIGTERM (it runs in a thread: the C loop
    never returns, and the main thread must stay free to take signals)."""
    start = rpc_function("ggml_backend_rpc_start_server", StartServerFn)
    array = (_ptr * len(devices))(*devices)
    _KEEP.append(array)
    args = (str(endpoint).encode(), cache_dir.encode() if cache_dir else None, threads, len(devices), array)
    server = threading.Thread(target=start, args=args, name="rpc-server", daemon=True)
    server.start()
    while server.is_alive():
        server.join(0.5)
    sys.stdout.flush()
    raise TliteError(None, f"llama.cpp's RPC server on {endpoint} stopped (see its message above)")

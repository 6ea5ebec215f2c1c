"""The driver's view of the GPUs through NVML (the driver's management library, loaded with ctypes, no torch):
library load, init, driver and CUDA driver versions, devices, their memory and MIG mode, for the probe
(probe.py). Every call's failure is reported with its nvml.h code and text, never raised.
`LORAKIT_NVML_LIB` overrides the library path."""

from __future__ import annotations

import ctypes
import os
from typing import Any

NVML_DEFAULT = "libnvidia-ml.so.1"
# nvml.h return codes the doctor explains; others are reported by number and nvmlErrorString.
NVML_ERRORS = {
    1: "NVML_ERROR_UNINITIALIZED",
    2: "NVML_ERROR_INVALID_ARGUMENT",
    3: "NVML_ERROR_NOT_SUPPORTED",
    4: "NVML_ERROR_NO_PERMISSION",
    6: "NVML_ERROR_NOT_FOUND",
    9: "NVML_ERROR_DRIVER_NOT_LOADED",
    12: "NVML_ERROR_LIBRARY_NOT_FOUND",
    13: "NVML_ERROR_FUNCTION_NOT_FOUND",
    15: "NVML_ERROR_GPU_IS_LOST",
    17: "NVML_ERROR_OPERATING_SYSTEM",
    18: "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
    999: "NVML_ERROR_UNKNOWN",
}


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def error_text(e: BaseException) -> str:
    """An exception as the probe reports it: its type and text, one string."""
    return f"{type(e).__name__}: {e}".strip()


class NvmlError(Exception):
    def __init__(self, fn: str, code: int, text: str):
        super().__init__(f"{fn} returned {code} ({NVML_ERRORS.get(code, 'unknown code')}): {text}")
        self.code = code


def probe_nvml() -> dict[str, Any]:
    """The driver's view, without torch: library load, init, driver version, devices and their memory."""
    lib_path = os.environ.get("LORAKIT_NVML_LIB") or NVML_DEFAULT
    out: dict[str, Any] = {
        "lib": lib_path,
        "loaded": False,
        "load_error": None,
        "init": False,
        "init_error": None,
        "init_code": None,
        "driver_version": None,
        "cuda_driver_version": None,
        "device_count": None,
        "devices": [],
        "errors": {},
    }
    try:
        lib = ctypes.CDLL(lib_path)
    except OSError as e:
        out["load_error"] = error_text(e)
        return out
    out["loaded"] = True

    def text_of(code: int) -> str:
        try:
            fn = lib.nvmlErrorString
            fn.restype = ctypes.c_char_p
            raw = fn(ctypes.c_int(code))
            return raw.decode(errors="replace") if raw else ""
        except AttributeError:
            return ""

    def call(name: str, *args) -> None:
        try:
            fn = getattr(lib, name)
        except AttributeError as e:
            raise NvmlError(name, 13, "the library has no such function") from e
        code = int(fn(*args))
        if code != 0:
            raise NvmlError(name, code, text_of(code))

    try:
        call("nvmlInit_v2")
    except NvmlError as e:
        out["init_error"] = str(e)
        out["init_code"] = e.code
        return out
    out["init"] = True
    try:
        buf = ctypes.create_string_buffer(96)
        try:
            call("nvmlSystemGetDriverVersion", buf, ctypes.c_uint(96))
            out["driver_version"] = buf.value.decode(errors="replace")
        except NvmlError as e:
            out["errors"]["driver_version"] = str(e)
        try:
            v = ctypes.c_int(0)
            call("nvmlSystemGetCudaDriverVersion_v2", ctypes.byref(v))
            out["cuda_driver_version"] = f"{v.value // 1000}.{(v.value % 1000) // 10}"
        except NvmlError as e:
            out["errors"]["cuda_driver_version"] = str(e)
        count = ctypes.c_uint(0)
        try:
            call("nvmlDeviceGetCount_v2", ctypes.byref(count))
            out["device_count"] = count.value
        except NvmlError as e:
            out["errors"]["device_count"] = str(e)
            return out
        for i in range(count.value):
            dev: dict[str, Any] = {"index": i, "errors": {}}
            handle = ctypes.c_void_p()
            try:
                call("nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint(i), ctypes.byref(handle))
            except NvmlError as e:
                dev["errors"]["handle"] = str(e)
                out["devices"].append(dev)
                continue
            for key, fn in (("name", "nvmlDeviceGetName"), ("uuid", "nvmlDeviceGetUUID")):
                try:
                    buf = ctypes.create_string_buffer(96)
                    call(fn, handle, buf, ctypes.c_uint(96))
                    dev[key] = buf.value.decode(errors="replace")
                except NvmlError as e:
                    dev["errors"][key] = str(e)
            try:
                mem = _Memory()
                call("nvmlDeviceGetMemoryInfo", handle, ctypes.byref(mem))
                dev["memory_total"], dev["memory_free"] = int(mem.total), int(mem.free)
            except NvmlError as e:
                dev["errors"]["memory"] = str(e)
            try:
                current, pending = ctypes.c_uint(0), ctypes.c_uint(0)
                call("nvmlDeviceGetMigMode", handle, ctypes.byref(current), ctypes.byref(pending))
                dev["mig_mode"] = bool(current.value)
            except NvmlError as e:
                dev["mig_mode"] = None
                if e.code != 3:  # NOT_SUPPORTED: a GPU without MIG
                    dev["errors"]["mig_mode"] = str(e)
            out["devices"].append(dev)
    finally:
        try:
            call("nvmlShutdown")
        except NvmlError:
            pass
    return out

"""The host a run ran on: hostname, OS, Python, CPU, GPUs and chosen environment variables.

The parts that cannot change while the process lives are computed once. The
CPU comes from ``/proc/cpuinfo`` on Linux (read directly, no subprocess) and
``sysctl`` on macOS; GPUs from ``nvidia-smi -q -x`` when it answers, and the
``gpus`` entry is left out when it does not. Only the environment variables
named in ``SETTINGS.HOST_INFO.CAPTURED_ENV`` are recorded.

Another plugin adds host entries by implementing ``expkit_host_info`` too: the
dicts every implementation returns are merged into the run's host record.
An experiment's own ``additional_host_info`` gatherers are merged by the core.
"""

from __future__ import annotations

import copy
import functools
import os
import platform
import sys
from typing import Any

from expkit.pluginmanager import hookimpl
from expkit.settings import SETTINGS

_COMMAND_TIMEOUT = 5.0


@hookimpl
def expkit_host_info() -> dict[str, Any]:
    """Hostname, OS, Python version, CPU, GPUs (when ``nvidia-smi`` answers) and ``ENV``."""
    settings = SETTINGS.HOST_INFO
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "os": [platform.system(), platform_name()],
        "python_version": platform.python_version(),
        "cpu": _cpu_name() if settings.INCLUDE_CPU_INFO else None,
    }
    if not settings.INCLUDE_GPU_INFO:
        info["gpus"] = None
    else:
        gpus = _gpu_info()
        if gpus is not None:
            info["gpus"] = copy.deepcopy(gpus)
    info["ENV"] = {name: os.environ[name] for name in settings.CAPTURED_ENV if name in os.environ}
    return info


@functools.cache
def platform_name() -> str:
    """What ``platform.platform()`` returns, without its child process on Linux."""
    if not sys.platform.startswith("linux"):
        return platform.platform()
    # There platform.platform() runs `uname -p` (a child process: ~4 ms, most of a no-op
    # run's host probing) for a processor name it drops when it is "unknown" or repeats the
    # machine, as on every distribution we know of; the rest comes from uname and the libc.
    uname = platform.uname()  # its processor field is only asked for when read
    libc, version = platform.libc_ver()
    name = "-".join(p.strip() for p in (uname.system, uname.release, uname.machine) if p)
    name = f"{name}-with-{libc}{version}"
    name = name.replace(" ", "_").replace("unknown", "")
    for char in '/\\:;"()':
        name = name.replace(char, "-")
    while "--" in name:
        name = name.replace("--", "-")
    return name.strip("-")


@functools.cache
def _cpu_name() -> str | None:
    """The CPU's model name, read once per process."""
    name: str | None = None
    if sys.platform.startswith("linux"):
        name = _linux_cpu_name()
    elif sys.platform == "darwin":
        name = _run("sysctl", "-n", "machdep.cpu.brand_string")
    return name or platform.processor() or None


def _linux_cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return None


@functools.cache
def _gpu_info() -> dict[str, Any] | None:
    """``nvidia-smi``'s GPUs and driver version, asked once per process; ``None`` without it."""
    if not _on_path("nvidia-smi"):
        return None  # the usual case: no process to start
    xml = _run("nvidia-smi", "-q", "-x")
    return None if xml is None else parse_nvidia_smi(xml)


def parse_nvidia_smi(xml: str) -> dict[str, Any] | None:
    """The GPUs in the XML ``nvidia-smi -q -x`` prints, or ``None`` when it is not that."""
    import xml.etree.ElementTree as ET  # only on machines with nvidia-smi

    try:
        root = ET.fromstring(xml)
        gpus = [
            {
                "model": gpu.findtext("product_name", "").strip(),
                "total_memory": int(gpu.findtext("fb_memory_usage/total", "").split()[0]),
                "persistence_mode": gpu.findtext("persistence_mode", "").strip() == "Enabled",
            }
            for gpu in root.findall("gpu")
        ]
    except (ET.ParseError, ValueError, IndexError):
        return None
    return {"gpus": gpus, "driver_version": root.findtext("driver_version", "").strip() or None}


def _on_path(program: str) -> bool:
    if sys.platform == "win32":
        return True  # programs there end in one of PATHEXT's suffixes: let the start tell
    folders = os.environ.get("PATH", os.defpath).split(os.pathsep)
    return any(os.access(os.path.join(d or ".", program), os.X_OK) for d in folders)


def _run(*command: str) -> str | None:
    """``command``'s output, or ``None`` when it is missing, fails or hangs."""
    import subprocess

    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None

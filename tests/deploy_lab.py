"""A Flower deployment on loopback for tests: real SuperLink/SuperNode processes, TLS, SuperNode authentication.

Every process is started in its own session and stopped with all its descendants (SuperExec, ServerApp and
ClientApp processes), first politely, then with SIGKILL; every wait has a deadline; ports are chosen free at
runtime; each component gets its own FLWR_HOME under the test's temporary directory, so nothing touches ~/.flwr.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

BASE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    # the app's dependencies are this environment's; never `uv sync` a fresh one
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "PYTHONUNBUFFERED": "1",
    "COLUMNS": "200",
    "NO_COLOR": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def stop_tree(proc: subprocess.Popen, grace: float = 10.0, hard: bool = False) -> None:
    """SIGTERM (SIGKILL when ``hard``: a device losing power) the process and every descendant (some run
    detached in their own session), then SIGKILL whatever is left after ``grace`` seconds."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


class Lab:
    """One SuperLink with TLS and ``--enable-supernode-auth``, SuperNodes added on demand."""

    def __init__(self, root: Path, num_keys: int) -> None:
        self.root = root
        self.port = free_port()
        self.certs = root / "certs"
        self.procs: dict[str, subprocess.Popen] = {}
        subprocess.run(["bash", str(REPO / "scripts/make_certs.sh"), str(self.certs), str(num_keys)],
                       check=True, capture_output=True, timeout=120)
        cli_home = self.home("cli")
        (cli_home / "config.toml").write_text(
            '[superlink]\ndefault = "lab"\n\n[superlink.lab]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.certs / "ca.crt"}"\n'
        )

    def home(self, name: str) -> Path:
        path = self.root / "flwr_home" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def env(self, name: str) -> dict[str, str]:
        return {**os.environ, **BASE_ENV, "FLWR_HOME": str(self.home(name))}

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        out = open(self.root / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(args, cwd=self.root, env=self.env(name), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        out.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str, hard: bool = False) -> None:
        if name in self.procs:
            stop_tree(self.procs.pop(name), hard=hard)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    # -------------------------------------------------------------- components
    def start_superlink(self, timeout: float = 120) -> None:
        self.start("superlink", [
            str(BIN / "flower-superlink"),
            "--ssl-ca-certfile", str(self.certs / "ca.crt"),
            "--ssl-certfile", str(self.certs / "server.pem"),
            "--ssl-keyfile", str(self.certs / "server.key"),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--database", str(self.root / "superlink.db"),
        ])
        wait_for(lambda: "Uvicorn running on https" in self.log("superlink") or self._died("superlink"),
                 timeout, "the SuperLink to listen")
        assert self.procs["superlink"].poll() is None, self.log("superlink")[-3000:]

    def _died(self, name: str) -> bool:
        return self.procs[name].poll() is not None

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *args], cwd=REPO, env=self.env("cli"), capture_output=True,
                              text=True, timeout=timeout)

    def flwr_json(self, *args: str, timeout: float = 120) -> dict:
        proc = self.flwr(*args, "--format", "json", timeout=timeout)
        start = proc.stdout.find("{")
        assert proc.returncode == 0 and start >= 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return json.loads(proc.stdout[start:])

    def register(self, key: int) -> int:
        reply = self.flwr_json("supernode", "register", str(self.certs / f"supernode_{key}.pub"), "lab")
        assert reply["success"], reply
        return int(reply["node-id"])

    def start_supernode(self, name: str, key: int, node_config: str, max_wait_s: int | None = None) -> None:
        args = [
            str(BIN / "flower-supernode"),
            "--superlink", f"127.0.0.1:{self.port}",
            "--root-certificates", str(self.certs / "ca.crt"),
            "--auth-supernode-private-key", str(self.certs / f"supernode_{key}"),
            "--node-config", node_config,
            "--host", "127.0.0.1", "--port", str(free_port()),
        ]
        if max_wait_s is not None:
            args += ["--max-retries", "2", "--max-wait-time", str(max_wait_s)]
        self.start(name, args)

    def online_nodes(self) -> set[int]:
        nodes = self.flwr_json("supernode", "list", "lab")["nodes"]
        return {int(n["node-id"]) for n in nodes if n["status"] == "online"}

    def run_status(self, run_id: str) -> str:
        [run] = self.flwr_json("list", "--run-id", run_id, "lab")["runs"]
        return run["status"]

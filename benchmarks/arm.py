"""The ClientApp on aarch64: installed with scripts/install_device.sh in an arm64 Debian userland under qemu
user-mode emulation, joined to a native SuperLink with TLS and SuperNode authentication.

One 2-round ``+fleet=lab3`` run (``flwr run``, model=tiny-llama) with three SuperNodes, each with its own key pair:
partition 0 (Jetson TX2 class, backprop LoRA) and partition 1 (Pixel 8 class, ZeroQAT on a packed W4A8 base)
run the emulated aarch64 Python; partition 2 (Xavier NX class, backprop LoRA) runs natively. Per device it
reports ``platform.machine()`` as the device's Python says it, the install time, each round's time (the
SuperNode receiving its train message until its reply is sent) and whether its replies were aggregated.

    python -m benchmarks.arm        # or: bash scripts/arm_check.sh
                                    # first run: builds ~/.cache/edgefleet/arm64 (EDGEFLEET_ARM_CACHE)

Writes docs/benchmarks/arm.{md,json} (``--out DIR`` elsewhere). Needs qemu-user-static and mmdebstrap (Debian).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.arm_userland import REPO, SetupError, cache_root, ensure_device

sys.path.insert(0, str(REPO / "tests"))
from deploy_lab import Lab, free_port, wait_for  # noqa: E402  (the deployment test's TLS + auth lab)

ROUNDS = 2
ROUND_TIMEOUT_S = 2400  # emulated ClientApps start slowly (a fresh process per message); bounds, not measures
RUN_DEADLINE_S = 5400
# The base checkpoint is pretrained natively before the run (as tests/test_deployment.py does) into a cache
# that the emulated devices read: 20 steps, the tests' setting; pretraining under emulation is not the point.
FAST = ["model=tiny-llama", "model.pretrain.steps=20", "model.pretrain.warmup_steps=2",
        "data.central_eval_windows=16"]
# Flower 1.42's SuperNode gives a ClientApp process 30 s (HEARTBEAT_DEFAULT_INTERVAL) from claiming its task
# to its first heartbeat, and 60 s between heartbeats, then revokes the task token and starts another ClientApp.
# An emulated ClientApp on a loaded 2-core host needs minutes to import flwr and torch, so the emulated
# SuperNodes run with a longer grace: only the task-token lifetime in the SuperNode's own state is changed.
TASK_GRACE_S = 900
SUPERNODE_LAUNCH = (
    "import sys\n"
    "from flwr.supercore.corestate import in_memory_corestate, sql_corestate\n"
    f"in_memory_corestate.HEARTBEAT_DEFAULT_INTERVAL = sql_corestate.HEARTBEAT_DEFAULT_INTERVAL = {TASK_GRACE_S}\n"
    "from flwr.supernode.cli import flower_supernode\n"
    "sys.argv[0] = 'flower-supernode'\n"
    "sys.exit(flower_supernode())\n"
)
# name, key/partition, node config, emulated, trainer of the class
DEVICES = [
    ("arm-jetson", 0, 'partition-id=0 device-class="jetson_tx2"', True, "lora_backprop"),
    ("arm-phone", 1, 'partition-id=1 device-class="pixel_8"', True, "zeroqat"),
    ("native", 2, 'partition-id=2 device-class="jetson_xavier_nx"', False, "lora_backprop"),
]


class ArmLab(Lab):
    """The deployment test's lab; the emulated SuperNodes (and the SuperExec and ClientApps they start, found on
    PATH) get the aarch64 venv first on PATH."""

    def __init__(self, root: Path, num_keys: int, arm_env: dict[str, str], arm_names: set[str]) -> None:
        super().__init__(root, num_keys)
        self.arm_env, self.arm_names = arm_env, arm_names

    def env(self, name: str) -> dict[str, str]:
        env = super().env(name)
        return {**env, **self.arm_env} if name in self.arm_names else env


class LogClock(threading.Thread):
    """Timestamps the SuperNode log lines that bracket each train message (Flower's log has no clock)."""

    def __init__(self, lab: Lab, names: list[str]) -> None:
        super().__init__(daemon=True)
        self.lab, self.names, self.stop = lab, names, threading.Event()
        self.events: dict[str, list[tuple[float, str]]] = {n: [] for n in names}
        self._seen = {n: 0 for n in names}

    def run(self) -> None:
        while not self.stop.is_set():
            for name in self.names:
                lines = self.lab.log(name).splitlines()
                now = time.time()
                for line in lines[self._seen[name]:]:
                    if "Receiving: train message" in line or "Sending: train message" in line:
                        self.events[name].append((now, "recv" if "Receiving" in line else "send"))
                self._seen[name] = len(lines)
            self.stop.wait(0.5)

    def round_times(self, name: str) -> list[float]:
        times, start = [], None
        for t, kind in self.events[name]:
            if kind == "recv":
                start = t
            elif start is not None:
                times.append(round(t - start, 1))
                start = None
        return times


def device_machine(python: str) -> str:
    return subprocess.run([python, "-c", "import platform; print(platform.machine())"], capture_output=True,
                          text=True, timeout=600, check=True).stdout.strip()


def run_federation(device: dict, work: Path, cache_dir: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from runconfig.load import compose
    from server.preflight import prepare

    prepare(compose(["+fleet=lab3", f"cache_dir={cache_dir}", *FAST]), show_progress=False)
    arm_env = {"PATH": f"{device['venv_bin']}:{os.environ['PATH']}", "EDGEFLEET_CACHE": str(cache_dir)}
    lab = ArmLab(work / "lab", num_keys=len(DEVICES), arm_env=arm_env,
                 arm_names={name for name, _, _, emulated, _ in DEVICES if emulated})
    clock = LogClock(lab, [d[0] for d in DEVICES])
    try:
        lab.start_superlink()
        node_ids = {name: lab.register(key) for name, key, *_ in DEVICES}
        for name, key, config, emulated, _ in DEVICES:
            if not emulated:
                lab.start_supernode(name, key=key, node_config=config)
                continue
            lab.start(name, [
                device["python"], "-c", SUPERNODE_LAUNCH,
                "--superlink", f"127.0.0.1:{lab.port}",
                "--root-certificates", str(lab.certs / "ca.crt"),
                "--auth-supernode-private-key", str(lab.certs / f"supernode_{key}"),
                "--node-config", config,
                "--host", "127.0.0.1", "--port", str(free_port()),
            ])
        t0 = time.perf_counter()
        wait_for(lambda: lab.online_nodes() >= set(node_ids.values()), 900, "3 SuperNodes online", every=5)
        online_s = time.perf_counter() - t0
        clock.start()
        out, uri = work / "out", f"sqlite:///{work / 'mlflow.db'}"
        overrides = " ".join([
            "+fleet=lab3", f"rounds={ROUNDS}", "client.local_steps=2", "federation.eval_cohort_size=0",
            f"federation.round_timeout_s={ROUND_TIMEOUT_S}", f"tracking.uri={uri}", f"output_dir={out}",
            f"cache_dir={cache_dir}", *FAST,
        ])
        t0 = time.perf_counter()
        run_id = lab.flwr_json("run", str(REPO), "lab", "--run-config", f'overrides="{overrides}"')["run-id"]
        wait_for(lambda: lab.run_status(run_id).startswith("finished"), RUN_DEADLINE_S, "the run to finish",
                 every=15)
        run_s = time.perf_counter() - t0
        status = lab.run_status(run_id)
        time.sleep(2)
        clock.stop.set()
        clock.join(timeout=5)
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        client = MlflowClient(tracking_uri=uri)
        [run] = client.search_runs([client.get_experiment_by_name("edgefleet").experiment_id])
        per_round = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
                     for key in ("fleet/replies", "fleet/rejected", "fleet/failures", "fleet/no_reply",
                                 "train/loss", "timing/round_wall_s")}
        logs = {name: lab.log(name) for name, *_ in DEVICES}
    except BaseException:
        for name in ["superlink", *(d[0] for d in DEVICES)]:
            print(f"----- {name} log (tail) -----\n{lab.log(name)[-3000:]}", file=sys.stderr)
        raise
    finally:
        clock.stop.set()
        lab.close()
    return {"status": status, "run_s": run_s, "online_s": online_s, "summary": summary, "per_round": per_round,
            "round_times": {name: clock.round_times(name) for name, *_ in DEVICES}, "logs": logs}


def collect(device: dict, fed: dict) -> dict:
    replies = fed["per_round"]["fleet/replies"]
    rejected = fed["per_round"]["fleet/rejected"]
    full_rounds = [r for r in range(1, ROUNDS + 1) if replies.get(r) == len(DEVICES) and not rejected.get(r)]
    native_machine = platform.machine()
    devices = []
    for name, key, config, emulated, trainer in DEVICES:
        sent = fed["logs"][name].count("Sending: train message")
        devices.append({
            "name": name, "partition": key, "node_config": config, "emulated": emulated,
            "machine": device["machine"] if emulated else native_machine,
            "trainer": trainer,
            # a round counts for this device when it sent its reply and the server aggregated every reply
            "rounds_ok": min(sent, len(full_rounds)),
            "install_s": round(device["install_s"], 1) if emulated else None,
            "round_s": fed["round_times"][name],
            "reply_status": "aggregated" if sent >= ROUNDS and len(full_rounds) == ROUNDS else f"sent {sent}",
        })
    return {
        "model": "tiny-llama (trained and priced; base pretrained 20 steps natively)",
        "fleet": "lab3", "rounds": ROUNDS, "local_steps": 2,
        "superlink_tls": True, "supernode_auth": True,
        "run_status": fed["status"], "run_s": round(fed["run_s"], 1), "online_s": round(fed["online_s"], 1),
        "replies_per_round": {str(k): v for k, v in sorted(replies.items())},
        "train_loss": {str(k): v for k, v in sorted(fed["per_round"]["train/loss"].items())},
        "round_wall_s": {str(k): round(v, 1) for k, v in sorted(fed["per_round"]["timing/round_wall_s"].items())},
        "aarch64_userland": "Debian 12 arm64 (python3 3.11.2) under qemu-aarch64-static user-mode emulation",
        "torch_on_device": device.get("torch"),
        "install_fresh_s": round(device["install_s"], 1), "install_rerun_s":
            round(device["rerun_s"], 1) if device.get("rerun_s") else None,
        "install_note": device.get("note"),
        "qemu_cpu": "neoverse-n1", "task_grace_s": TASK_GRACE_S,
        "host_machine": native_machine,
        "devices": devices,
    }


def write(result: dict, out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "arm.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        "| device | partition | machine (device's own) | trainer | rounds ok | install s | round s | reply |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in result["devices"]:
        kind = "aarch64 under qemu" if d["emulated"] else "native"
        rows.append(f"| {d['name']} ({kind}) | {d['partition']} | {d['machine']} | {d['trainer']} | "
                    f"{d['rounds_ok']}/{result['rounds']} | {d['install_s'] if d['install_s'] is not None else '-'} "
                    f"| {', '.join(f'{s:.0f}' for s in d['round_s'])} | {d['reply_status']} |")
    table = "\n".join(rows)
    replies = ", ".join(f"round {k}: {int(v)}" for k, v in result["replies_per_round"].items())
    loss = ", ".join(f"round {k}: {v:.3f}" for k, v in result["train_loss"].items())
    md = f"""# The ClientApp on aarch64 (`python -m benchmarks.arm`)

Model trained and priced: **tiny-llama** (base pretrained 20 steps natively, then read from the shared cache by
every device). A native SuperLink with TLS and SuperNode authentication (superlink_tls: {result['superlink_tls']}),
three SuperNodes each with its own registered key pair, one 2-round `+fleet=lab3` run through `flwr run`
(`client.local_steps=2`, no federated evaluation). Two SuperNodes run the aarch64 Python of a Debian 12 arm64
userland under `qemu-aarch64-static` (user-mode emulation on a {result['host_machine']} host), installed with
`scripts/install_device.sh` from wheels fetched from PyPI; one runs natively.

{table}

Run: {result['run_status']} in {result['run_s']:.0f} s (SuperNodes online after {result['online_s']:.0f} s);
replies aggregated per round: {replies}; train loss per round: {loss}.
Device torch: {result['torch_on_device']} (PyPI's aarch64 wheel is the CUDA 13 build; it trains on the CPU).
Install: {result['install_fresh_s']:.0f} s for the first install, one userland shared by both emulated devices
(`install_device.sh` under emulation, from the cached wheels; downloads not counted{
'' if not result.get('install_note') else '; ' + result['install_note']}){
'' if result['install_rerun_s'] is None else f", {result['install_rerun_s']:.0f} s to re-run it"}.
The emulated CPU is a Neoverse-N1; the emulated SuperNodes give a ClientApp {result.get('task_grace_s', TASK_GRACE_S)} s
to start instead of Flower's 30 s (docs/deploy.md, "Checked on aarch64").

Round s: the SuperNode receiving its train message until its reply is sent, including Flower's fresh ClientApp
process per message (importing torch, transformers and the project, loading the model; under emulation this
dominates). Emulated times are qemu's, tens of times slower than real ARM hardware: they show that it runs,
not how fast a device is. Timings come from a shared 2-core machine.
"""
    (out_dir / "arm.md").write_text(md)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs/benchmarks")
    parser.add_argument("--cache", type=Path, default=None, help="userland cache (default ~/.cache/edgefleet/arm64)")
    parser.add_argument("--reinstall", action="store_true", help="re-run install_device.sh in a cached userland")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops the lab's processes
    root = args.cache or cache_root()
    try:
        device = ensure_device(root, args.reinstall)
        device["machine"] = device_machine(device["python"])  # what the device's Python says today
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rerun = f", re-run {device['rerun_s']:.0f} s" if device.get("rerun_s") else ""
    print(f"aarch64 device ready: machine {device['machine']}, torch {device['torch']}, first install "
          f"{device['install_s']:.0f} s{rerun}", flush=True)
    with tempfile.TemporaryDirectory(prefix="edgefleet-arm-") as tmp:
        fed = run_federation(device, Path(tmp), root / "edgefleet-cache")
    result = collect(device, fed)
    print(write(result, args.out))
    ok = result["run_status"] == "finished:completed" and all(d["rounds_ok"] == ROUNDS for d in result["devices"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

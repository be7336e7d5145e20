"""`simulation.ray_address=...` attaches Flower's simulation engine to a running Ray cluster.

Flower's Ray backend calls ``ray.init(**init_args)`` only when Ray is not initialised in the process
(flwr/server/superlink/fleet/vce/backend/raybackend.py); simulations/launch.py puts ``address`` in those init
args, so the run must show up as a driver job in the cluster's own job table. The head runs in a private
``--temp-dir`` (so no other Ray user on the machine auto-connects to it) and is stopped with its whole process
tree, never with ``ray stop`` (which would stop every Ray instance on the machine).
"""

import json
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import run_cli
from deploy_lab import BIN, free_port, stop_tree, wait_for

pytestmark = pytest.mark.deployment


@pytest.fixture(scope="module")
def ray_head():
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ef-ray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    log = open(f"{temp_dir}/head.log", "w")  # noqa: SIM115
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=false", f"--temp-dir={temp_dir}", "--disable-usage-stats", "--block"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    address = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: _jobs(address) is not None or head.poll() is not None, 120, "the Ray head", every=2)
        assert head.poll() is None, open(f"{temp_dir}/head.log").read()[-2000:]
        yield address
    finally:
        stop_tree(head, grace=15)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _jobs(address: str):
    """The cluster's driver jobs, read in a separate process (this one never joins the cluster)."""
    code = (
        "import json, ray; ray.init(address=%r, logging_level='ERROR');"
        "print(json.dumps([{'entry': j['Entrypoint'], 'dead': j['IsDead']} for j in ray._private.state.jobs()]))"
    ) % address
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_simulation_attaches_to_a_running_ray_cluster(ray_head, fast_overrides, tmp_path):
    before = _jobs(ray_head)
    args = ["-m", "simulations.run", "+fleet=lab3", "rounds=1", "client.local_steps=2",
            "federation.eval_cohort_size=0", f"simulation.ray_address={ray_head}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"hydra.run.dir={tmp_path / 'out'}", *fast_overrides]
    proc = run_cli(args, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "summary.json").exists()
    new = [j for j in _jobs(ray_head) if j not in before]
    assert any("simulations.run" in j["entry"] for j in new), new  # the run was a driver of *this* cluster
    assert all(j["dead"] for j in new if "simulations.run" in j["entry"])  # and left it when done


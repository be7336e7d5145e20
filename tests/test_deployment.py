"""Flower's deployment engine on loopback: a SuperLink and 3 SuperNodes as real processes, TLS and SuperNode
authentication on, a 2-round run submitted with ``flwr run``; an unknown SuperNode is refused; one SuperNode is
killed (SIGKILL, like a device losing power) in the middle of round 2 and the run still finishes, reporting the
lost device (the SuperLink notices the missing heartbeats and answers for it, or the round times out).

The run is slow on a loaded 2-core machine (Flower starts a fresh ClientApp process for every message), so the
deadlines below are generous; they bound the test, they do not measure it.
"""

import json
import ssl
import socket

import pytest
from mlflow.tracking import MlflowClient

from deploy_lab import REPO, Lab, wait_for
from runconfig.load import compose
from server.preflight import prepare

pytestmark = pytest.mark.deployment

NODES = 3  # lab3: partition 0 jetson_tx2, 1 pixel_8, 2 jetson_xavier_nx
UNKNOWN_KEY = NODES  # a key pair that is never registered
ROUND_TIMEOUT_S = 240
RUN_DEADLINE_S = 400  # each of the two waits; together under pytest-timeout's 900 s per test


@pytest.fixture(scope="module")
def lab(tmp_path_factory, fast_overrides):
    prepare(compose(["+fleet=lab3", *fast_overrides]), show_progress=False)  # cache the base model once
    lab = Lab(tmp_path_factory.mktemp("lab"), num_keys=NODES + 1)
    try:
        lab.start_superlink()
        lab.node_ids = [lab.register(i) for i in range(NODES)]
        for i in range(NODES):
            config = f"partition-id={i}" + (' device-class="pixel_8"' if i == 1 else "")
            lab.start_supernode(f"supernode{i}", key=i, node_config=config)
        wait_for(lambda: lab.online_nodes() >= set(lab.node_ids), 180, "3 SuperNodes online", every=3)
        yield lab
    finally:
        lab.close()


def test_superlink_speaks_tls_with_the_local_ca_only(lab):
    trusted = ssl.create_default_context(cafile=str(lab.certs / "ca.crt"))
    with socket.create_connection(("127.0.0.1", lab.port), timeout=10) as raw:
        with trusted.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with socket.create_connection(("127.0.0.1", lab.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")


def test_unregistered_supernode_is_refused(lab):
    lab.start_supernode("intruder", key=UNKNOWN_KEY, node_config="partition-id=0", max_wait_s=15)
    proc = lab.procs["intruder"]
    wait_for(lambda: proc.poll() is not None, 120, "the unregistered SuperNode to give up")
    assert proc.returncode != 0
    assert "could not establish a connection" in lab.log("intruder")
    assert "No SuperNode found with the given public key" in lab.log("superlink")
    assert len(lab.online_nodes()) == NODES  # only the registered ones
    lab.stop("intruder")


def _train_messages(lab, name: str) -> int:
    return lab.log(name).count("Receiving: train message")


@pytest.fixture(scope="module")
def finished_run(lab, fast_overrides):
    """2 rounds through `flwr run`; SuperNode 2 is killed as soon as it receives its round-2 work."""
    out = lab.root / "out"
    uri = f"sqlite:///{lab.root / 'mlflow.db'}"
    overrides = " ".join([
        "+fleet=lab3", "rounds=2", "client.local_steps=2", "federation.eval_cohort_size=0",
        f"federation.round_timeout_s={ROUND_TIMEOUT_S}", f"tracking.uri={uri}", f"output_dir={out}",
        *fast_overrides,
    ])
    reply = lab.flwr_json("run", str(REPO), "lab", "--run-config", f'overrides="{overrides}"')
    run_id = reply["run-id"]
    polls = iter(range(10**6))  # the log every 2 s, the SuperLink (a `flwr` process) every 20 s

    def round2_reached_node2_or_run_over() -> bool:
        if _train_messages(lab, "supernode2") >= 2:
            return True
        return next(polls) % 10 == 9 and lab.run_status(run_id).startswith("finished")

    wait_for(round2_reached_node2_or_run_over, RUN_DEADLINE_S, "round 2 to reach SuperNode 2", every=2)
    killed_mid_round = _train_messages(lab, "supernode2") >= 2
    lab.stop("supernode2", hard=True)  # SIGKILL the SuperNode, its SuperExec and ClientApp: no goodbye
    wait_for(lambda: lab.run_status(run_id).startswith("finished"), RUN_DEADLINE_S, "the run to finish", every=15)
    return run_id, uri, out, killed_mid_round


def test_two_round_run_finishes_and_is_tracked(lab, finished_run):
    run_id, uri, out, _ = finished_run
    assert lab.run_status(run_id) == "finished:completed"
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("edgefleet").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["fleet.name"] == "lab3"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/global_ppl")] == [0, 1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["mlflow_run_id"] == run.info.run_id
    assert summary["bytes_up"] > 0


def test_killed_supernode_does_not_stall_the_run_and_is_reported(lab, finished_run):
    run_id, uri, out, killed_mid_round = finished_run
    assert killed_mid_round, "round 2 never reached SuperNode 2"
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("edgefleet").experiment_id])

    def per_round(key):
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}

    replies, lost, failed = per_round("fleet/replies"), per_round("fleet/no_reply"), per_round("fleet/failures")
    assert replies == {1: 3, 2: 2}  # round 1: the whole bench; round 2 completed with the two survivors
    assert lost[1] + failed[1] == 0
    assert lost[2] + failed[2] == 1  # no reply within the timeout, or Flower's "node unavailable" error reply
    summary = json.loads((out / "summary.json").read_text())
    assert summary["no_reply"] + summary["failures"] == 1

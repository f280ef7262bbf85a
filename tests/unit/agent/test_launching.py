"""From an assignment to a Launch: one contract for both runtimes (the job's folders
as the runtime shows them), folders checked to stay under the storage root, and the
built-in trainer's config written with the paths the job sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlsm.agent.launching import RANK_DEVICE, launch_for, runtime_of
from mlsm.agent.runtimes import Mount, StartFailed
from mlsm.backoff import Backoff


class Seen:
    """A runtime that shows mounts at their targets, as a container does."""

    name = "docker"

    def sees(self, mount: Mount) -> str:
        return mount.target


class Host:
    name = "venv"

    def sees(self, mount: Mount) -> str:
        return str(mount.source)


def assignment(**spec: object) -> dict[str, object]:
    base: dict[str, object] = {"runtime": {"docker": {"image": "localhost/x:1"}},
                               "command": ["sh", "-c", "true"]}  # fmt: skip
    base.update(spec)
    return {"id": "r1", "job": "j", "gpus": [1, 3], "spec": base}


def launch(root: Path, runtime: object, entry: dict[str, object]):  # type: ignore[no-untyped-def]
    return launch_for(run="r1", assignment=entry, root=root, node="n1", runtime=runtime,  # type: ignore[arg-type]
                      catalog={"cats": {"path": "datasets/cats"}})  # fmt: skip


def test_both_runtimes_get_the_same_variables_at_the_paths_they_see(tmp_path: Path) -> None:
    (tmp_path / "datasets/cats").mkdir(parents=True)
    entry = assignment(dataset="cats", env={"GREETING": "hi"})
    boxed = launch(tmp_path, Seen(), entry)
    assert boxed.env == {
        "GREETING": "hi", "MLSM_RUN_ID": "r1", "MLSM_JOB": "j", "MLSM_RUN_DIR": "/mlsm/run",
        "MLSM_OUTPUT_DIR": "/mlsm/output", "MLSM_METRICS_FILE": "/mlsm/run/metrics.jsonl",
        "MLSM_PROVENANCE_FILE": "/mlsm/run/provenance.json",
        "MLSM_DATASET_DIR": "/mlsm/dataset", "MLSM_GPUS": "0,1", "MLSM_NODE_RANK": "0",
        "MLSM_NUM_NODES": "1", "MLSM_PROCESSES_PER_NODE": "1",
    }  # fmt: skip
    assert [(m.target, m.read_only) for m in boxed.mounts] == [
        ("/mlsm/run", False), ("/mlsm/output", False), ("/mlsm/dataset", True)]  # fmt: skip
    assert boxed.labels == {"mlsm.run": "r1", "mlsm.job": "j", "mlsm.node": "n1"}
    assert (boxed.image, list(boxed.gpus)) == ("localhost/x:1", [1, 3])
    plain = launch(tmp_path, Host(), entry)
    assert plain.env["MLSM_OUTPUT_DIR"] == str(tmp_path / "jobs/j/output")
    assert plain.env["MLSM_DATASET_DIR"] == str((tmp_path / "datasets/cats").resolve())
    assert plain.env["MLSM_METRICS_FILE"] == str(tmp_path / "runs/r1/metrics.jsonl")
    assert plain.env["MLSM_PROVENANCE_FILE"] == str(tmp_path / "runs/r1/provenance.json")
    assert plain.env["MLSM_GPUS"] == "1,3"  # a venv job sees the node's own indices
    assert runtime_of(entry) == "docker"
    assert runtime_of({"spec": {"runtime": {"venv": {}}}}) == "venv"


def test_a_folder_linked_out_of_the_storage_root_is_refused_before_it_is_made(
    tmp_path: Path,
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "jobs").mkdir(parents=True)
    outside.mkdir()
    (root / "jobs" / "j").symlink_to(outside)
    with pytest.raises(StartFailed, match="outside the storage root"):
        launch(root, Seen(), assignment())
    assert not list(outside.iterdir())
    (root / "datasets").mkdir()
    (root / "datasets" / "cats").symlink_to(outside)
    (root / "jobs" / "j").unlink()
    with pytest.raises(StartFailed, match="dataset cats is not on this node"):
        launch(root, Seen(), assignment(dataset="cats"))


def test_a_trainer_job_in_a_container_reads_its_config_at_the_paths_it_sees(
    tmp_path: Path,
) -> None:
    (tmp_path / "datasets/cats").mkdir(parents=True)
    entry = assignment(dataset="cats", command=None,
                       trainer={"model": "builtin:vit-tiny", "epochs": 1})  # fmt: skip
    boxed = launch(tmp_path, Seen(), entry)
    assert list(boxed.argv) == ["python3", "-m", "mlsm.training", "--config",
                                "/mlsm/run/trainer.json"]  # fmt: skip
    config = json.loads((tmp_path / "runs/r1/trainer.json").read_text())
    assert (config["datasetRoot"], config["outputDir"]) == ("/mlsm/dataset", "/mlsm/output")
    assert boxed.trainer


def test_backoff_doubles_to_its_ceiling_and_starts_over_after_a_success() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_a_trainer_with_two_gpus_runs_as_two_processes_under_torchrun(tmp_path: Path) -> None:
    (tmp_path / "datasets/cats").mkdir(parents=True)
    entry = assignment(dataset="cats", command=None, resources={"gpus": 2},
                       trainer={"model": "builtin:vit-tiny", "epochs": 1})  # fmt: skip
    boxed = launch(tmp_path, Seen(), entry)
    assert list(boxed.argv[:9]) == [
        "python3", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "--max-restarts=0", "--log-dir=/mlsm/run/ranks", "--tee=3", "--no-python",
    ]  # fmt: skip
    assert boxed.env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] == "[rank${rank}]: "
    assert not boxed.host_network
    assert boxed.argv[boxed.argv.index("mlsm-rank") + 1] == "python3"
    assert boxed.argv[-4:] == ["-m", "mlsm.training", "--config", "/mlsm/run/trainer.json"]
    assert boxed.env["MLSM_PROCESSES_PER_NODE"] == "2"
    one = launch(tmp_path, Seen(), assignment(dataset="cats", command=None,
                 resources={"gpus": 1}, trainer={"model": "builtin:vit-tiny"}))  # fmt: skip
    assert one.argv[:3] == ["python3", "-m", "mlsm.training"]  # one GPU: one process


def test_a_job_on_two_nodes_meets_at_node_rank_0s_endpoint(tmp_path: Path) -> None:
    """Node rank 0 hosts the c10d store; every node is told where it is, how many
    nodes meet, and its own rank; a container shares the host's network."""
    from mlsm.agent.rendezvous import Meeting

    entry = assignment(command=["python", "train.py"], launcher="torchrun", nodes=2,
                       processesPerNode=2, resources={"gpus": 0})  # fmt: skip
    for rank in (0, 1):
        meeting = Meeting(endpoint="10.0.0.1:29411", id="j-3", nodes=2, rank=rank,
                          address=f"10.0.0.{rank + 1}", timeout=30)  # fmt: skip
        boxed = launch_for(run="r1", assignment=entry, root=tmp_path, node="n1", runtime=Host(),  # type: ignore[arg-type]
                           catalog={}, meeting=meeting)  # fmt: skip
        argv = list(boxed.argv)
        assert "--standalone" not in argv
        conf = f"is_host={int(rank == 0)},join_timeout=30,read_timeout=30"
        assert argv[3:9] == [
            "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29411",
            "--rdzv-id=j-3", f"--rdzv-conf={conf}", f"--local-addr=10.0.0.{rank + 1}",
        ]  # fmt: skip
        assert (boxed.env["MLSM_NODE_RANK"], boxed.env["MLSM_NUM_NODES"]) == (str(rank), "2")
        assert boxed.env["MLSM_RENDEZVOUS"] == "10.0.0.1:29411"
        assert boxed.host_network


@pytest.mark.parametrize(
    ("spec", "launched"),
    [
        pytest.param({}, False, id="a-command-runs-as-it-is"),
        pytest.param({"launcher": "torchrun"}, True, id="torchrun-one-per-gpu"),
        pytest.param(
            {"launcher": "torchrun", "processesPerNode": 2, "resources": {"gpus": 0}},
            True,
            id="cpu-processes",
        ),
        pytest.param({"launcher": "none", "resources": {"gpus": 2}}, False, id="launches-itself"),
    ],
)
def test_a_command_job_asks_for_torchrun(
    tmp_path: Path, spec: dict[str, object], launched: bool
) -> None:
    entry = assignment(command=["python", "train.py"], **spec)
    argv = list(launch(tmp_path, Host(), entry).argv)
    assert (argv[:3] == ["python", "-m", "torch.distributed.run"]) is launched
    assert argv[-2:] == ["python", "train.py"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param(
            {"launcher": "none", "processesPerNode": 2},
            "needs launcher: torchrun",
            id="processes-without-torchrun",
        ),
        pytest.param(
            {"launcher": "torchrun", "processesPerNode": 3, "resources": {"gpus": 2}},
            "one process per GPU",
            id="processes-not-gpus",
        ),
    ],
)
def test_processes_per_node_is_checked(spec: dict[str, object], message: str) -> None:
    from mlsm import schemas

    base = {"runtime": {"venv": {}}, "command": ["python", "train.py"], **spec}
    with pytest.raises(ValueError, match=message):
        schemas.TrainingJobSpec.model_validate(base)


@pytest.mark.parametrize(
    ("gpus", "rank", "sees"),
    [
        pytest.param("3,5", "0", "3", id="rank-0-the-first"),
        pytest.param("3,5", "1", "5", id="rank-1-the-second"),
        pytest.param("", "1", "untouched", id="a-cpu-job-keeps-what-it-had"),
    ],
)
def test_each_process_sees_its_own_gpu(gpus: str, rank: str, sees: str) -> None:
    import os
    import subprocess

    env = {**os.environ, "MLSM_GPUS": gpus, "LOCAL_RANK": rank,
           "CUDA_VISIBLE_DEVICES": "untouched"}  # fmt: skip
    done = subprocess.run(["/bin/sh", "-c", RANK_DEVICE, "mlsm-rank", "sh", "-c",
                           'printf %s "$CUDA_VISIBLE_DEVICES"'],
                          env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout == sees

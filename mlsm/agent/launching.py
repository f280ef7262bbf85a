"""From an assignment to a `Launch`: what a run needs to start, whatever runs it.

The job's folders are named under the storage root (its run folder, its job's output
folder, the dataset the catalog places here, a model folder) and reach the runtime
as `Mount`s; the job's variables name them as the job will see them (the host path
for a venv job, the mount's target in a container), so both runtimes give a job the
same contract:

    MLSM_RUN_ID, MLSM_JOB, MLSM_RUN_DIR (the working directory), MLSM_OUTPUT_DIR,
    MLSM_METRICS_FILE, MLSM_PROVENANCE_FILE (`mlsm.agent.provenance`),
    MLSM_DATASET_DIR (with spec.dataset), and spec.env;
    MLSM_GPUS, MLSM_NODE_RANK, MLSM_NUM_NODES, MLSM_PROCESSES_PER_NODE, and for a
    job on several nodes MLSM_RENDEZVOUS (host:port of node rank 0).

A job under torchrun (`spec.launcher`, or the trainer with several GPUs) runs one
process per GPU (or `processesPerNode`); on one node with a standalone rendezvous,
on several with the c10d rendezvous of `rendezvous.Meeting`. Each process's lines
reach the run's log prefixed `[rankK]: ` (and its own file under ranks/ in the run
folder), so `mlsmctl logs --rank K` reads one process.

A built-in trainer job gets its config (spec.trainer with those folders filled in)
written into the run folder, and the command that runs it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlsm import schemas
from mlsm.agent.datasets import resolve_under
from mlsm.agent.records import RunFolder
from mlsm.agent.rendezvous import Meeting
from mlsm.agent.runtimes import Launch, Mount, Runtime, StartFailed
from mlsm.ranks import RANK_PREFIX

__all__ = ["RUN_DIR", "launch_for", "output_dir", "run_dir", "runtime_of", "torchrun"]

RUN_DIR, OUTPUT_DIR, DATASET_DIR, MODEL_DIR = (
    "/mlsm/run",
    "/mlsm/output",
    "/mlsm/dataset",
    "/mlsm/model",
)


def run_dir(root: Path, run: str) -> Path:
    return root / "runs" / run


def output_dir(root: Path, job: str) -> Path:
    return root / "jobs" / job / "output"


def runtime_of(assignment: Mapping[str, Any]) -> str:
    """The runtime an assignment asks for ('venv' when its spec cannot be read: the
    start then fails with InvalidSpec)."""
    runtime = assignment.get("spec", {}).get("runtime", {})
    return "docker" if isinstance(runtime, dict) and runtime.get("docker") else "venv"


def launch_for(
    *,
    run: str,
    assignment: Mapping[str, Any],
    root: Path,
    node: str,
    runtime: Runtime,
    catalog: Mapping[str, Mapping[str, str]],
    busy_cpus: Iterable[int] = (),
    meeting: Meeting | None = None,
) -> Launch:
    """The run's launch (raises StartFailed when a folder it needs is not here, and
    ValueError when its spec cannot be read). `meeting`: for a job on several nodes."""
    spec = schemas.TrainingJobSpec.model_validate(assignment.get("spec", {}))
    job = str(assignment.get("job", "?"))
    folder = RunFolder(run_dir(root, run))
    output = output_dir(root, job)
    for path in (folder.path, output):  # a link in the way must not take a job outside
        if resolve_under(root, str(path.relative_to(root))) is None:
            raise StartFailed(
                f"refused: {path} resolves to {path.resolve()}, outside the "
                f"storage root {root}; nothing was started or created"
            )
        path.mkdir(parents=True, exist_ok=True)
    mounts = [
        Mount(folder.path, RUN_DIR, read_only=False),
        Mount(output, OUTPUT_DIR, read_only=False),
    ]
    if spec.dataset is not None:
        where = assignment.get("dataset")
        if not isinstance(where, Mapping):
            where = catalog.get(spec.dataset, {})
        found = resolve_under(root, str(where.get("path", "")))
        if found is None or not found.is_dir():
            expected = root / str(where.get("path", "?"))
            raise StartFailed(
                f"dataset {spec.dataset} is not on this node (expected at {expected})"
            )
        mounts.append(Mount(found, DATASET_DIR))
    seen = {m.target: runtime.sees(m) for m in mounts}
    env = dict(spec.env)
    env.update(
        MLSM_RUN_ID=run,
        MLSM_JOB=job,
        MLSM_RUN_DIR=seen[RUN_DIR],
        MLSM_OUTPUT_DIR=seen[OUTPUT_DIR],
        MLSM_METRICS_FILE=_inside(seen[RUN_DIR], folder.metrics.name),
        MLSM_PROVENANCE_FILE=_inside(seen[RUN_DIR], folder.provenance.name),
    )
    if DATASET_DIR in seen:
        env["MLSM_DATASET_DIR"] = seen[DATASET_DIR]
    gpus = [int(i) for i in assignment.get("gpus", [])]
    # GPUs as the job sees them: a venv job the node's indices, a container its own
    # (the engine numbers the devices it is given from 0)
    visible = gpus if runtime.name == "venv" else list(range(len(gpus)))
    env.update(
        MLSM_GPUS=",".join(map(str, visible)),
        MLSM_NODE_RANK=str(meeting.rank if meeting else 0),
        MLSM_NUM_NODES=str(spec.nodes),
        MLSM_PROCESSES_PER_NODE=str(spec.processes if spec.under_torchrun else 1),
    )
    if meeting is not None:
        env["MLSM_RENDEZVOUS"] = meeting.endpoint
    argv = list(spec.command or [])
    if spec.trainer is not None:
        argv = _trainer(spec.trainer, root, folder, mounts, runtime, env)
    if spec.under_torchrun:
        env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] = RANK_PREFIX
        argv = torchrun(
            argv,
            processes=spec.processes,
            python=_python(runtime),
            log_dir=_inside(env["MLSM_RUN_DIR"], "ranks"),
            meeting=meeting,
        )
    venv, docker = spec.runtime.venv, spec.runtime.docker
    return Launch(
        run=run,
        job=job,
        node=node,
        folder=folder,
        argv=argv,
        env=env,
        mounts=mounts,
        gpus=gpus,
        cpu=spec.resources.cpu,
        memory=spec.resources.memory,
        busy_cpus=list(busy_cpus),
        python=venv.python if venv else "3",
        requirements=venv.requirements if venv else (),
        system_site_packages=venv.system_site_packages if venv else False,
        image=docker.image if docker else None,
        trainer=spec.trainer is not None,
        torchrun=spec.under_torchrun,
        labels={"mlsm.run": run, "mlsm.job": job, "mlsm.node": node},
        host_network=meeting is not None,
    )


RANK_DEVICE = (
    'if [ -n "${MLSM_GPUS:-}" ]; then '
    'CUDA_VISIBLE_DEVICES=$(printf %s "$MLSM_GPUS" | cut -d, -f$((LOCAL_RANK + 1))); '
    'export CUDA_VISIBLE_DEVICES; fi; exec "$@"'
)
"""Run by torchrun for each process: it sees only its own GPU, the LOCAL_RANK-th of
the job's (a CPU job's processes see none, as before)."""


def torchrun(
    argv: list[str],
    *,
    processes: int,
    python: str,
    log_dir: str,
    meeting: Meeting | None = None,
) -> list[str]:
    """`argv` as `processes` processes on this node under torchrun, each through
    `RANK_DEVICE`: with a standalone rendezvous on a free local port, or with
    `meeting`, the c10d rendezvous of a job on several nodes. Each process's output
    is teed to its file under `log_dir` and to the run's log, prefixed by its rank."""
    if meeting is None:
        where = ["--standalone"]
    else:
        conf = (
            f"is_host={int(meeting.rank == 0)},join_timeout={meeting.timeout:g},"
            f"read_timeout={meeting.timeout:g}"
        )
        where = [
            f"--nnodes={meeting.nodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={meeting.endpoint}",
            f"--rdzv-id={meeting.id}",
            f"--rdzv-conf={conf}",
            f"--local-addr={meeting.address}",
        ]
    return [
        python,
        "-m",
        "torch.distributed.run",
        *where,
        f"--nproc-per-node={processes}",
        "--max-restarts=0",
        f"--log-dir={log_dir}",
        "--tee=3",
        "--no-python",
        "/bin/sh",
        "-c",
        RANK_DEVICE,
        "mlsm-rank",
        *argv,
    ]


def _python(runtime: Runtime) -> str:
    return "python" if runtime.name == "venv" else "python3"


def _inside(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def _trainer(
    trainer: schemas.TrainerConfig,
    root: Path,
    folder: RunFolder,
    mounts: list[Mount],
    runtime: Runtime,
    env: dict[str, str],
) -> list[str]:
    """The built-in trainer's config (the job's spec.trainer, with the dataset and
    output dirs and a model folder as the job sees them), written into the run
    folder, and the command that runs it."""
    config = trainer.model_dump(mode="json", by_alias=True)
    if not trainer.model.startswith("builtin:"):
        model = resolve_under(root, trainer.model)
        if model is None or not model.is_dir():
            where = root / trainer.model
            raise StartFailed(
                f"model {trainer.model} is not on this node (expected a "
                f"Hugging Face model folder at {where})"
            )
        mounts.append(Mount(model, MODEL_DIR))
        config["model"] = runtime.sees(mounts[-1])
    config.update(datasetRoot=env.get("MLSM_DATASET_DIR", ""), outputDir=env["MLSM_OUTPUT_DIR"])
    folder.trainer_config.write_text(json.dumps(config, indent=2) + "\n")
    return [
        _python(runtime),
        "-m",
        "mlsm.training",
        "--config",
        _inside(env["MLSM_RUN_DIR"], folder.trainer_config.name),
    ]

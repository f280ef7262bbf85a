"""The TrainingJob manifest: what to run, where, with which data and resources."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, model_validator

from mlsm.schemas.base import API_VERSION, ObjectMeta, SpecModel
from mlsm.schemas.datasets import check_checksum
from mlsm.schemas.fields import Bytes, Cores, Duration, LabelKey, LabelValue, ResourceName
from mlsm.schemas.sweeps import Sweep
from mlsm.schemas.training import TrainerConfig

__all__ = [
    "DockerRuntime",
    "JobResources",
    "JobRuntime",
    "Toleration",
    "TrainingJob",
    "TrainingJobSpec",
    "VenvRuntime",
]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_ENV = ("MLSM_", "CUDA_VISIBLE_DEVICES")
_PYTHON_VERSION = re.compile(r"3(\.[0-9]+){0,2}")
_IMAGE = re.compile(r"[^\s]+")


def _check_python(value: str) -> str:
    if not _PYTHON_VERSION.fullmatch(value):
        raise ValueError(f"must be a Python 3 version such as '3.11', got '{value}'")
    return value


def _check_image(value: str) -> str:
    if not _IMAGE.fullmatch(value):
        raise ValueError(f"must be an image reference without spaces, got '{value}'")
    return value


def _check_env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(
            f"environment variable name '{value}' is invalid: use letters, digits and '_', "
            "not starting with a digit"
        )
    if value.startswith(_RESERVED_ENV):
        raise ValueError(f"'{value}' is set by the agent for every run; choose another name")
    return value


class VenvRuntime(SpecModel):
    """A Python virtual environment built on the node, cached by its requirements."""

    python: Annotated[str, AfterValidator(_check_python)] = Field(
        examples=["3.11"],
        default="3",
        description="Python version for the environment ('3.11'). Quote it in YAML: "
        "3.10 unquoted is the number 3.1.",
    )
    requirements: list[str] = Field(
        default_factory=list,
        description="pip requirement specifiers, as in requirements.txt.",
        examples=[["torch==2.13.0", "transformers>=4.46"]],
    )
    system_site_packages: bool = Field(
        default=False,
        description="Let the environment see the node's preinstalled packages (e.g. a "
        "system torch built for its GPUs).",
    )


class DockerRuntime(SpecModel):
    """A container image run through the node's Docker Engine API."""

    image: Annotated[str, AfterValidator(_check_image)] = Field(
        description="Image reference ('pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime').",
        examples=["localhost/trainer:latest"],
    )


class JobRuntime(SpecModel):
    """Where the job's process runs: exactly one of venv or docker."""

    venv: VenvRuntime | None = Field(default=None, description="Run in a Python venv.")
    docker: DockerRuntime | None = Field(default=None, description="Run in a container.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.venv is None) == (self.docker is None):
            which = "both are set" if self.venv else "neither is set"
            raise ValueError(f"set exactly one of 'venv' or 'docker' ({which})")
        return self


class JobResources(SpecModel):
    """What one process group of the job needs on each node it runs on."""

    gpus: int = Field(
        examples=[2], default=0, ge=0, le=64, description="GPUs per node (0: a CPU job)."
    )
    cpu: Cores = Field(default=1.0, description="CPU cores per node (4, or '500m').")
    memory: Bytes | None = Field(
        default=None, description="Memory per node ('16Gi'). Default: no reservation."
    )


class Toleration(SpecModel):
    """Lets the job onto nodes with a matching taint."""

    key: LabelKey = Field(examples=["reserved"], description="Taint key to tolerate.")
    operator: Literal["Equal", "Exists"] = Field(
        default="Equal", description="Equal: key and value must match. Exists: any value."
    )
    value: LabelValue = Field(
        examples=["vision"], default="", description="Taint value (with operator Equal)."
    )


class TrainingJobSpec(SpecModel):
    """Desired state of a job. Changing it bumps the job's generation."""

    runtime: JobRuntime = Field(
        description="Exactly one of venv or docker.",
        examples=[{"venv": {"python": "3.11", "requirements": ["numpy"]}}],
    )
    command: list[str] | None = Field(
        default=None,
        min_length=1,
        description="The program and its arguments. Exactly one of command or trainer.",
        examples=[["python", "train.py", "--epochs", "3"]],
    )
    trainer: TrainerConfig | None = Field(
        default=None, description="Run the built-in trainer instead of a command."
    )
    dataset: ResourceName | None = Field(
        examples=["imagenet-1k"],
        default=None,
        description="Name of a Dataset. The job runs only where an agent reports it, and "
        "sees it at $MLSM_DATASET_DIR (read-only).",
    )
    dataset_checksum: Annotated[str, AfterValidator(check_checksum)] | None = Field(
        examples=["sha256:" + "0" * 64],
        default=None,
        description="Run only on data with this checksum, as the node's agent measures "
        "the dataset (`mlsmctl get datasets`): a rerun of a past job on exactly its data "
        "(`mlsmctl reproduce`). Nodes holding another version are passed over.",
    )
    resources: JobResources = Field(
        default_factory=JobResources, description="GPUs, CPU and memory per node."
    )
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        description="Run only on Nodes whose labels include all of these.",
        examples=[{"gpu": "a100"}],
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Taints of Nodes this job may run on anyway."
    )
    priority: int = Field(
        examples=[10],
        default=0,
        ge=-1000,
        le=1000,
        description="Higher goes first when GPUs are scarce.",
    )
    nodes: int = Field(
        examples=[2], default=1, ge=1, le=64, description="Nodes for a multi-node torchrun job."
    )
    launcher: Literal["none", "torchrun"] | None = Field(
        default=None,
        description="How the job's processes start. 'torchrun': processesPerNode processes "
        "per node under torchrun (DDP; each process sees its own GPU in "
        "CUDA_VISIBLE_DEVICES, chosen by its LOCAL_RANK); the command then needs torch "
        "in its environment. 'none': one process, which may read $MLSM_GPUS, "
        "$MLSM_NODE_RANK, $MLSM_NUM_NODES and launch itself. Default: torchrun for the "
        "built-in trainer with more than one GPU per node, else none.",
    )
    processes_per_node: int | None = Field(
        examples=[4],
        default=None,
        ge=1,
        le=64,
        description="Processes per node under torchrun (default: the job's GPUs per node, "
        "at least 1). One per GPU: with GPUs it must equal resources.gpus; without, it "
        "runs CPU processes (gloo), for CPU jobs and tests.",
    )
    retries: int = Field(
        examples=[2],
        default=0,
        ge=0,
        le=100,
        description="Failed runs retried up to this many times.",
    )
    max_duration: Duration | None = Field(
        default=None,
        description="Stop a run after this long ('6h30m'); the job fails with DeadlineExceeded.",
    )
    env: dict[Annotated[str, AfterValidator(_check_env_name)], str] = Field(
        examples=[{"WANDB_MODE": "offline"}],
        default_factory=dict,
        description="Extra environment variables for the job.",
    )
    suspend: bool = Field(
        default=False, description="true: do not start (a running job is stopped)."
    )
    sweep: Sweep | None = Field(
        default=None,
        description="Expand this job into child jobs NAME-0, NAME-1, ... over trainer fields, a "
        "grid or random draws, each an ordinary job labelled with its values "
        "(`mlsmctl get sweep NAME` ranks them). Needs 'trainer'.",
    )

    @model_validator(mode="after")
    def _command_or_trainer(self) -> Self:
        if self.command is None and self.trainer is None:
            raise ValueError("set one of 'command' or 'trainer' (neither is set)")
        if self.command is not None and self.trainer is not None:
            raise ValueError("set only one of 'command' or 'trainer' (both are set)")
        if self.sweep is not None and self.trainer is None:
            raise ValueError("a sweep varies the built-in trainer's fields: set 'trainer'")
        if self.dataset_checksum is not None and self.dataset is None:
            raise ValueError("datasetChecksum pins a dataset: name it in 'dataset'")
        if self.trainer is not None and self.dataset is None:
            raise ValueError("the built-in trainer needs 'dataset': name an imagefolder Dataset")
        if self.processes_per_node is not None:
            if self.launcher == "none":
                raise ValueError("processesPerNode needs launcher: torchrun (or leave it out)")
            gpus = self.resources.gpus
            if gpus and self.processes_per_node != gpus:
                raise ValueError(
                    f"processesPerNode {self.processes_per_node} with resources.gpus {gpus}: "
                    "torchrun runs one process per GPU; set them equal or leave "
                    "processesPerNode out"
                )
        return self

    @property
    def processes(self) -> int:
        """Processes per node: processesPerNode, else one per GPU (at least one)."""
        return self.processes_per_node or max(self.resources.gpus, 1)

    @property
    def under_torchrun(self) -> bool:
        """Whether the job's processes start under torchrun."""
        if self.launcher is not None:
            return self.launcher == "torchrun"
        return self.trainer is not None and self.processes > 1


class TrainingJob(SpecModel):
    """A training job; merging its manifest is the approval to run it."""

    api_version: Literal["mlsm/v1"] = Field(default=API_VERSION, description="Always mlsm/v1.")
    kind: Literal["TrainingJob"] = Field(default="TrainingJob", description="Always TrainingJob.")
    metadata: ObjectMeta
    spec: TrainingJobSpec

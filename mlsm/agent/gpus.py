"""GPU discovery: NVML (nvidia-ml-py) when it is installed, else `nvidia-smi`, else
none (a CPU-only node). A JSON file can stand in for both: tests and unusual
hardware give the agent its GPU list that way (`gpus_file` in the agent settings).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlsm.errors import UserError

__all__ = ["Gpu", "discover_gpus", "parse_nvidia_smi", "read_gpus_file"]

_QUERY = "index,uuid,name,memory.total"


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory: int
    """Bytes."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def discover_gpus(gpus_file: Path | None = None) -> tuple[list[Gpu], str]:
    """The node's GPUs and where the list came from ('file', 'nvml', 'nvidia-smi', 'none')."""
    if gpus_file is not None:
        return read_gpus_file(gpus_file), "file"
    try:
        return _from_nvml(), "nvml"
    except Exception:  # not installed, no driver, no device: try the next way
        pass
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            query = [smi, f"--query-gpu={_QUERY}", "--format=csv,noheader,nounits"]
            done = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True)
            return parse_nvidia_smi(done.stdout), "nvidia-smi"
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    return [], "none"


def _from_nvml() -> list[Gpu]:
    import pynvml  # type: ignore[import-not-found]  # nvidia-ml-py: optional

    pynvml.nvmlInit()
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(Gpu(index, _text(uuid), _text(name), int(memory)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_nvidia_smi(output: str) -> list[Gpu]:
    """Lines of `index, uuid, name, memory.total (MiB)`, as `--format=csv,noheader,nounits`."""
    gpus = []
    for line in output.splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4:
            raise ValueError(f"unexpected nvidia-smi line: {line!r}")
        index, uuid, name, memory = fields
        gpus.append(Gpu(int(index), uuid, name, int(float(memory)) << 20))
    return gpus


def read_gpus_file(path: Path) -> list[Gpu]:
    """A JSON list of {index, uuid, name, memory}; `[]` declares a CPU-only node."""
    try:
        data = json.loads(path.read_text())
        return [Gpu(int(g["index"]), str(g.get("uuid", f"GPU-fake-{g['index']}")),
                    str(g.get("name", "fake")), int(g.get("memory", 0))) for g in data]  # fmt: skip
    except FileNotFoundError:
        raise UserError(f"gpus_file {path}: no such file") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(
            f"gpus_file {path}: must be a JSON list of {{index, uuid, name, memory}}: {exc}"
        ) from None

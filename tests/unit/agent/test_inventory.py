"""GPU discovery (a GPU file, a real `nvidia-smi` stand-in on PATH) and dataset scans
with their digest cache."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from mlsm.agent.datasets import DatasetScanner, resolve_under
from mlsm.agent.gpus import Gpu, discover_gpus, parse_nvidia_smi
from mlsm.errors import UserError

SMI = "0, GPU-aaaa, NVIDIA A100-SXM4-80GB, 81920\n1, GPU-bbbb, NVIDIA A100-SXM4-80GB, 81920\n"


def test_nvidia_smi_output_is_parsed() -> None:
    assert parse_nvidia_smi(SMI) == [
        Gpu(0, "GPU-aaaa", "NVIDIA A100-SXM4-80GB", 81920 << 20),
        Gpu(1, "GPU-bbbb", "NVIDIA A100-SXM4-80GB", 81920 << 20),
    ]


def test_discovery_asks_nvidia_smi_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '{SMI.replace(chr(10), chr(92) + 'n')}'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpus, source = discover_gpus()  # (NVML is absent or finds no driver here)
    assert source == "nvidia-smi"
    assert [g.uuid for g in gpus] == ["GPU-aaaa", "GPU-bbbb"]


def test_no_gpus_is_a_cpu_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    gpus, source = discover_gpus()
    assert (gpus, source) == ([], "none")


def test_a_gpu_file_stands_in(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps([{"index": 0, "uuid": "GPU-x", "name": "Fake", "memory": 1}]))
    assert discover_gpus(path) == ([Gpu(0, "GPU-x", "Fake", 1)], "file")
    path.write_text("{not json")
    with pytest.raises(UserError, match=r"gpus_file .*gpus.json: must be a JSON list"):
        discover_gpus(path)


def _tree(root: Path) -> Path:
    base = root / "datasets" / "cats"
    for split, label, body in [("train", "cat", b"a"), ("train", "dog", b"bb"),
                               ("val", "cat", b"ccc")]:  # fmt: skip
        (base / split / label).mkdir(parents=True, exist_ok=True)
        (base / split / label / "0.png").write_bytes(body)
    return base


def test_a_scan_counts_lists_classes_and_checksums(tmp_path: Path) -> None:
    _tree(tmp_path)
    scanner = DatasetScanner(tmp_path, tmp_path / "state" / "digests.json")
    result = scanner.scan("datasets/cats", "imagefolder")
    assert result is not None
    assert (result.files, result.bytes, result.classes) == (3, 6, ("cat", "dog"))
    assert result.checksum.startswith("sha256:")
    assert scanner.scan("datasets/dogs", "imagefolder") is None
    assert scanner.scan("../outside", "files") is None


def test_a_rescan_of_an_unchanged_tree_reads_no_file(tmp_path: Path) -> None:
    base = _tree(tmp_path)
    first = DatasetScanner(tmp_path, tmp_path / "state" / "digests.json")
    before = first.scan("datasets/cats", "imagefolder")
    first.save()
    again = DatasetScanner(tmp_path, tmp_path / "state" / "digests.json")  # a restart
    assert again.scan("datasets/cats", "imagefolder") == before
    assert again.hashed_bytes == 0, "every digest came from the cache"

    (base / "val" / "cat" / "0.png").write_bytes(b"changed!")
    after = again.scan("datasets/cats", "imagefolder")
    assert after is not None
    assert before is not None
    assert after.checksum != before.checksum
    assert again.hashed_bytes == 8, "only the changed file was read"


def test_symbolic_links_out_of_the_root_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key").write_text("x")
    root = tmp_path / "root"
    base = _tree(root)
    (base / "train" / "leak").symlink_to(outside)
    (root / "datasets" / "escape").symlink_to(outside)
    result = DatasetScanner(root).scan("datasets/cats", "files")
    assert result is not None
    assert result.files == 3
    assert resolve_under(root, "datasets/escape") is None
    assert resolve_under(root, "/etc") is None
    assert resolve_under(root, "datasets/../../secret") is None
    assert resolve_under(root, "datasets/cats") == base.resolve()

"""The agent's side of `mlsmctl predict`: classify a caller's images with the
checkpoint of a job this node holds (`mlsm.controller.predicting` relays them).

A request names a job, never a path: the checkpoint is this agent's own
`<storage root>/jobs/<job>/output/checkpoints/best` (`last` when the job keeps only
that), a folder that must resolve inside the storage root. The images go to a
private folder under the agent's state, named by their index; the classifier runs
as a child process on the CPU (`mlsm.classifying`: a training job's GPUs stay its
own) within `timeout` seconds, one request at a time; the folder is removed after.
Every outcome, failures included, is answered, so the caller never waits out its
timeout for an error that is known here.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from mlsm.agent.client import Complaints, ControllerClient, Gone, Refused, Unreachable
from mlsm.agent.datasets import resolve_under
from mlsm.agent.launching import output_dir
from mlsm.agent.records import safe_name
from mlsm.classifying import ClassifyFailed, Labels, classify, saved_checkpoint

__all__ = ["PREDICT_SECONDS", "Predictor", "checkpoint_of"]

log = logging.getLogger("mlsm.agent")

PREDICT_SECONDS = 110.0
"""Within the caller's default wait (120 s), so a slow classifier is answered as one."""
SEEN_KEPT = 1000


def checkpoint_of(root: Path, job: str) -> tuple[str, Path]:
    """The folder name and path of `job`'s checkpoint to predict with here."""
    output = output_dir(root, job)
    checkpoints = resolve_under(root, str((output / "checkpoints").relative_to(root)))
    found = saved_checkpoint(checkpoints) if checkpoints is not None else None
    if found is not None and not found[1].resolve().is_relative_to(root.resolve()):
        found = None  # a link a job left there, pointing out of the storage root
    if found is None:
        raise ClassifyFailed(
            409,
            f"no saved checkpoint of job {job} here (looked in {output}/checkpoints/best "
            "and last): the trainer saves one after its first epoch",
        )
    return found


class Predictor:
    """Takes request ids from the assignments answers (`take`) and serves them in
    `loop`, one at a time."""

    def __init__(
        self,
        client: ControllerClient,
        root: Path,
        state: Path,
        complaints: Complaints,
        *,
        timeout: float = PREDICT_SECONDS,
        python: str = sys.executable,
    ) -> None:
        self.client = client
        self.root = root
        self.scratch = state / "predictions"
        self.complaints = complaints
        self.timeout = timeout
        self.python = python
        self._seen: dict[str, None] = {}
        self._send, self._receive = anyio.create_memory_object_stream[str](max_buffer_size=100)

    def take(self, entries: object) -> None:
        """Queue the requests an assignments answer lists (each once)."""
        for entry in entries if isinstance(entries, list) else []:
            queued = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(queued, str) or len(queued) > 64 or queued in self._seen:
                continue
            self._seen[queued] = None
            while len(self._seen) > SEEN_KEPT:
                del self._seen[next(iter(self._seen))]
            try:
                self._send.send_nowait(queued)
            except anyio.WouldBlock:
                log.warning("too many prediction requests waiting; dropped %s", queued)

    async def loop(self) -> None:
        async with self._receive:
            async for queued in self._receive:
                await self.serve(queued)

    async def serve(self, queued: str) -> None:
        try:
            request = await self.client.prediction(queued)
        except Gone:
            return  # the caller left, or another controller answered it
        except (Refused, Unreachable) as exc:
            self.complaints.complain("predict", f"cannot fetch prediction request: {exc}")
            self._seen.pop(queued, None)  # the next assignments answer names it again
            return
        answer = await anyio.to_thread.run_sync(self.predict, request)
        try:
            await self.client.answer_prediction(queued, answer)
        except Gone:
            return
        except (Refused, Unreachable) as exc:
            self.complaints.complain("predict", f"cannot answer prediction request: {exc}")

    def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        """The answer to one request (blocking)."""
        job, images = request.get("job"), request.get("images")
        log.info(
            "predict: %d image(s) with job %s's checkpoint",
            len(images) if isinstance(images, list) else 0,
            job,
        )
        try:
            if not safe_name(job) or not isinstance(images, list):
                raise ClassifyFailed(400, f"a request for job {str(job)[:63]!r} that is not one")
            name, checkpoint = checkpoint_of(self.root, str(job))
            python = self.python_for(checkpoint)
            labels = self._classify(checkpoint, images, int(request.get("topK") or 3), python)
            return {"checkpoint": name, "labels": labels}
        except ClassifyFailed as exc:
            return {"error": str(exc), "status": exc.status}

    def python_for(self, checkpoint: Path) -> str:
        """The Python of the venv that trained the checkpoint (its provenance names
        it: the packages the model was made with), else the agent's own."""
        try:
            environment = json.loads((checkpoint / "provenance.json").read_text())["environment"]
            built = environment["requirementsHash"] if environment["runtime"] == "venv" else None
        except (OSError, ValueError, KeyError, TypeError):
            built = None
        if safe_name(built):
            python = self.root / "envs" / str(built) / "bin" / "python"
            if python.is_file():
                return str(python)
        return self.python

    def _classify(self, checkpoint: Path, images: list[Any], top_k: int, python: str) -> Labels:
        self.scratch.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=self.scratch))
        try:
            paths, names = [], []
            for index, image in enumerate(images):
                path = folder / f"image-{index}"
                try:
                    path.write_bytes(base64.b64decode(str(image["data"]), validate=True))
                except (KeyError, TypeError, binascii.Error, ValueError):
                    raise ClassifyFailed(400, f"image {index} is not base64 data") from None
                paths.append(path)
                names.append(str(image.get("name") or f"image {index}"))
            return classify(
                checkpoint,
                paths,
                top_k=top_k,
                timeout=self.timeout,
                names=names,
                python=python,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

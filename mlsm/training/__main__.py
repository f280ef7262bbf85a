"""`python -m mlsm.training --config FILE` trains; `python -m mlsm.training predict
MODEL_DIR IMAGE...` classifies with a checkpoint. Errors are one line (exit 1); a
SIGTERM saves a checkpoint and exits 143."""

from __future__ import annotations

import argparse
import json
import os
import sys

from mlsm.errors import UserError


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub: fail fast instead of retrying
    try:
        if args[:1] == ["predict"]:
            return _predict(args[1:])
        return _train(args)
    except UserError as exc:
        print(f"mlsm.training: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _train(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlsm.training",
        description="Fine-tune an image classifier on an ImageFolder.",
    )
    parser.add_argument("--config", required=True, help="JSON or YAML run config.")
    options = parser.parse_args(args)
    from mlsm.training.config import load_config
    from mlsm.training.looping import EXIT_TERMINATED, train

    result = train(load_config(options.config))
    return EXIT_TERMINATED if result.stopped == "SIGTERM" else 0


def _predict(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlsm.training predict",
        description="Top-k labels for images from a checkpoint.",
    )
    parser.add_argument("model_dir")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="One JSON list on stdout.")
    options = parser.parse_args(args)
    from mlsm.training.predicting import predict

    found = predict(options.model_dir, options.images, top_k=options.top_k)
    if options.json:  # what an agent relays (`mlsm.agent.predicting`)
        print(json.dumps([[[label, score] for label, score in ranked] for ranked in found]))
        return 0
    for image, ranked in zip(options.images, found, strict=True):
        print(f"{image}: " + ", ".join(f"{label} {score:.3f}" for label, score in ranked))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The built-in trainer: fine-tunes Hugging Face image classifiers on an ImageFolder
with PyTorch (checkpoints, resume, metrics, torchrun). The only package of mlsm that
imports torch and transformers; run it as `python -m mlsm.training`."""

"""`python -m mlsm.cli` runs mlsmctl."""

from mlsm.cli.main import entry

entry()

"""`python -m mlsm.web`: the same as `mlsm-web`."""

from mlsm.web.main import entry

entry()

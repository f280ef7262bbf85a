#!/bin/sh
# mlsmctl for a CI job: the one the image already has, or MLSM_PACKAGE through pip.
set -eu
if command -v mlsmctl >/dev/null 2>&1; then
  mlsmctl --version
  exit 0
fi
if [ -z "${MLSM_PACKAGE:-}" ]; then
  echo "error: no mlsmctl here, and MLSM_PACKAGE is not set. Set the CI variable" >&2
  echo "MLSM_PACKAGE to where your lab installs mlsm from, as pip takes it, e.g." >&2
  echo "  git+https://github.com/your-lab/mlsm@v0.1.0" >&2
  exit 1
fi
python -m pip install --quiet --disable-pip-version-check "$MLSM_PACKAGE"
mlsmctl --version

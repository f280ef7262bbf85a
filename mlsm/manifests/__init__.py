"""Loading manifests: YAML from files, directories or a git tree, parsed safely,
validated against `mlsm.schemas`, located to file:line:col, and cross-checked.

    result = manifests.load_paths(["manifests/"])
    for problem in result.problems:
        print(problem)          # jobs/vit.yaml:14:7: error: TrainingJob/vit: spec...
"""

from mlsm.manifests.crosschecking import (
    Facts,
    cross_check,
    facts_of,
    never_takes,
    node_rejects,
)
from mlsm.manifests.loading import (
    MANIFEST_SUFFIXES,
    GitTreeCache,
    LoadResult,
    SourceError,
    SweepSummary,
    check_paths,
    discover,
    load_bytes,
    load_git_change,
    load_git_tree,
    load_paths,
)
from mlsm.manifests.parsing import DEFAULT_LIMITS, Limits, Position, dump_yaml
from mlsm.manifests.problems import ManifestError, Problem, format_field
from mlsm.manifests.validating import Located

__all__ = [
    "DEFAULT_LIMITS",
    "MANIFEST_SUFFIXES",
    "Facts",
    "GitTreeCache",
    "Limits",
    "LoadResult",
    "Located",
    "ManifestError",
    "Position",
    "Problem",
    "SourceError",
    "SweepSummary",
    "check_paths",
    "cross_check",
    "discover",
    "dump_yaml",
    "facts_of",
    "format_field",
    "load_bytes",
    "load_git_change",
    "load_git_tree",
    "load_paths",
    "never_takes",
    "node_rejects",
]

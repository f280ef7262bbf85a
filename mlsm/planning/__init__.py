"""Pure planning: what a sync should change (and, later, where jobs should run).
Nothing here imports the database, git, HTTP or containers."""

from mlsm.planning.reconciling import (
    ALLOW_MASS_PRUNE,
    Action,
    Create,
    Desired,
    DesiredState,
    Invalidate,
    Plan,
    Prune,
    Relocate,
    Revalidate,
    Stored,
    Update,
    desired_state,
    plan_sync,
    spec_hash,
)

__all__ = [
    "ALLOW_MASS_PRUNE",
    "Action",
    "Create",
    "Desired",
    "DesiredState",
    "Invalidate",
    "Plan",
    "Prune",
    "Relocate",
    "Revalidate",
    "Stored",
    "Update",
    "desired_state",
    "plan_sync",
    "spec_hash",
]

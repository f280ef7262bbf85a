"""Pure planning: what a sync should change, and where pending jobs run.
Nothing here imports the database, git, HTTP or containers."""

from mlsm.planning.scheduling import (
    Binding,
    NodeView,
    PendingJob,
    Placement,
    ScheduleResult,
    schedule,
)
from mlsm.planning.syncing import (
    ALLOW_MASS_PRUNE,
    Action,
    Create,
    Desired,
    DesiredState,
    Invalidate,
    ManifestMemo,
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
    "Binding",
    "Create",
    "Desired",
    "DesiredState",
    "Invalidate",
    "ManifestMemo",
    "NodeView",
    "PendingJob",
    "Placement",
    "Plan",
    "Prune",
    "Relocate",
    "Revalidate",
    "ScheduleResult",
    "Stored",
    "Update",
    "desired_state",
    "plan_sync",
    "schedule",
    "spec_hash",
]

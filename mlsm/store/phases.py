"""The phases a job and a run are in, as stored: the sets every reader shares (the
controller's transitions, the read API, the status site).

Job phases: Pending -> Scheduled -> Starting -> Running -> Succeeded | Failed |
Cancelled (and back to Pending when a run is retried). Run phases are the same plus
Lost (its node stopped reporting past the lost timeout).
"""

from __future__ import annotations

__all__ = ["ACTIVE", "FINISHED", "JOB_PHASES"]

JOB_PHASES = ("Pending", "Scheduled", "Starting", "Running", "Succeeded", "Failed", "Cancelled")
"""In the order a job goes through them (the order the site lists them in)."""

FINISHED = frozenset({"Succeeded", "Failed", "Cancelled"})
"""Job and run phases that never change again."""

ACTIVE = frozenset({"Scheduled", "Starting", "Running"})
"""Run phases that hold their node's GPUs."""

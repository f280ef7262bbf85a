"""mlsm: a declarative GitOps reconciler for ML research groups.

Nodes, Datasets and TrainingJobs are YAML manifests in a git repository; a
controller reconciles them into a database and schedules jobs onto nodes, where
agents run them. See docs/architecture.md.
"""

__version__ = "0.1.0"

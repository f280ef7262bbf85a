"""The controller: follows a git branch, reconciles manifests into the store, and
serves the read API (later: schedules jobs and talks to agents)."""

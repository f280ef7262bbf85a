"""The controller: follows a git branch, reconciles its manifests into the store,
schedules jobs onto nodes, and serves the APIs and the status site.

A map of the modules, by what each one is:

- The process and its loops: `running.py` (the sync loop, the scheduling loop with
  the lease check, the file watch and the HTTP server, in one task group), and
  `main.py` (`mlsm-controller`).
- Reconcilers, each a step a loop runs in one transaction:
  - `syncing.py`: one sync; it plans with `mlsm.planning.syncing` and applies the
    plan with `applying.py`;
  - `scheduling.py`: one scheduling pass; it plans with `mlsm.planning.scheduling`
    and binds runs;
  - `leasing.py`: the time-driven checks (node leases, lost runs, deadlines,
    suspend).
- The lifecycle: `lifecycle.py` is every phase change of a job or run, with its
  event. `events.py` holds conditions and the audit log's rows.
- HTTP edges:
  - `api.py`: the read API, the webhook, apply and delete;
  - `agents.py`: the agent API;
  - `inputs.py`: bounded request input and the one `HttpError`;
  - `serving.py`: uvicorn with read deadlines;
  - `capacity.py`: the worker-thread shares;
  - `heartbeats.py`: the in-memory node table and batched heartbeat writes.
  The status site (`mlsm.web`) is mounted beside them.
- Git I/O:
  - `sources.py`: reading a branch;
  - `committing.py`: the commits `mlsmctl apply` makes;
  - `rewinds.py`: noticing a store restored to an older state than git.
"""

"""The node agent, `mlsm-agent`: runs on each compute server, heartbeats its inventory
to the controller, long-polls for the runs assigned to its node, and starts, stops and
reports them (see `running.Agent`)."""

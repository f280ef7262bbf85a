from mlsm.agent.main import entry

entry()

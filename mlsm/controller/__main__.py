from mlsm.controller.main import entry

entry()

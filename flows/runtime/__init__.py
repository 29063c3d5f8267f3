"""How work runs: the workspace lock, transient-fault retries, signals, runners (threads, Dask),
tool settings, execution knobs."""

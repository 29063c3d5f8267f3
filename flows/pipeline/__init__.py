"""The pipeline: the Prefect flow (run.py), its tasks, one stage, the merge plan, the sources area,
data import, the workspace."""

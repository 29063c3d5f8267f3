"""Orchestration and IO around grasp_core: CLI, runners, and (later) Prefect, MLflow, DVC, GX."""

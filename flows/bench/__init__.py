"""Benchmarks: one module per `grasp bench` command; each prints a table and writes --json.

Sits above ops/ (it may use deploy/export)."""

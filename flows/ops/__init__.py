"""Day-2 operations: lineage and its audit, status, restore, schedule, export, predict, deploy."""

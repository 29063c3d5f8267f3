"""The stores: MLflow runs and registry, DVC versioning, the Great Expectations data gate, store health."""

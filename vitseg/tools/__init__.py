"""Tools around the models: FLOPs/params, benchmarks, export, robustness, visualisation, model zoo."""

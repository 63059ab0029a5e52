"""The MLflow Model Registry side: the registered pyfunc, promotion with the `champion` alias, reports."""

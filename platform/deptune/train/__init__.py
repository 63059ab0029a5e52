"""The per-worker training loop: optimizer groups, schedule, evaluation, best-adapter checkpoint."""

"""Sweeps: a spec's search space, the persistent Optuna study, the searcher, the trial runner, the sweep's
tracker (parent run, leaderboard, registration) and the driver that runs one execution on Ray Tune."""

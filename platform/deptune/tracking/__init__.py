"""MLflow: a parent run per sweep execution, a child run per trial, plots and leaderboard on the parent,
the best adapter registered as a pyfunc model whose `champion` alias moves only on improvement."""

"""deptune: hyperparameter search for Decomposed Prompt Tuning (DePT) on Ray."""

__version__ = "0.1.0"

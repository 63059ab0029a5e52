"""Tasks: text-to-text formats, verbalisers, metrics, splits and data files (`catalog`, `loading`)."""

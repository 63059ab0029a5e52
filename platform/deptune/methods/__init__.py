"""Prompt methods, one folder each (`<method>/config.py` torch-free, `<method>/model.py`), registered by
name in `registry`; `adapters` builds their models, `io` and `record` read and write adapter files."""

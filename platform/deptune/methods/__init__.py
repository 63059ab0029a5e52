"""Prompt methods, one folder each (`<method>/config.py` torch-free, `<method>/model.py`), registered by
name in `catalog`; `adapters` builds their models, `io` and `record` read and write adapter files."""

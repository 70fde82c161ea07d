"""The locked harness: data, tokenizer, the runtime train.py imports, evaluation and the runner.

The research agent may never edit anything in this package. `cockpit prepare` records a hash
of every file here, and the runner refuses to start a run when a file no longer matches.
"""

"""The training script the research agent edits: trainer/train.py (run it through `cockpit train`)."""

"""The pipeline run (``flows/pipeline.py``): its state file, read by review-advance and ``castlab status RUN``."""

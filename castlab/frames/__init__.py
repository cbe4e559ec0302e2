"""Frames: video → shots → representative frames, quality gates, near-duplicates, splits, report."""

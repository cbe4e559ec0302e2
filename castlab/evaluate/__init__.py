"""Checkpoint evaluation: same prompts and seeds per checkpoint → metrics and ranking."""

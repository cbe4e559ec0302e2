"""Backgrounds stage: character-free set images from curate runs (the background dataset)."""

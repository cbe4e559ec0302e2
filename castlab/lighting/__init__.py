"""Lighting stage: per-frame lighting measures and labels (the lighting dataset)."""

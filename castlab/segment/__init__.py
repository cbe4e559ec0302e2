"""Segmentation: SAM2 character instances, layers, backgrounds, propagation through a shot."""

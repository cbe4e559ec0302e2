"""Captions: VLM schema captions, assembled text, QC flags, report."""

"""Identity: face-first embeddings, clusters, review decisions, suggestions."""

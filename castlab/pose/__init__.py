"""Pose stage: body keypoints per character instance, normalised, categorised, clustered (the pose dataset)."""

"""The video stage (issue 19, under way): VACE training clips (:mod:`castlab.video.vace`)."""

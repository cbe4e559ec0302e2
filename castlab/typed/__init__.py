"""Dataset types beyond characters (background, style, lighting, pose, expression): prepare a curate run's candidates
(:mod:`castlab.typed.stage`), review them in Label Studio (:mod:`castlab.labelstudio.projects.typed`), build the
dataset (:mod:`castlab.typed.recipes` with :func:`castlab.dataset.assemble.assemble`)."""

TYPE_NAMES = ("background", "style", "lighting", "pose", "expression")  # castlab.typed.spec.TYPES, importable cheaply

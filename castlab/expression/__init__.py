"""Expression stage: face crops of reviewed characters and their expression labels (the expression dataset)."""

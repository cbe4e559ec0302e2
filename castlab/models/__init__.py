"""Model roles resolved from config: real architectures; ``tiny`` = random seeded weights, ``full`` = real."""

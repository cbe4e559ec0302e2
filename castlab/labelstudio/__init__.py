"""Label Studio: SDK helpers (:mod:`client`), review projects and ML backend connections."""

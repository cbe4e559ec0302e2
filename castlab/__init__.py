"""castlab: curate character datasets from 3D-animated film and train LoRA adapters."""

__version__ = "0.1.0"

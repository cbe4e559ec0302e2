"""Dataset assembly: reviewed instances → a LoRA training dataset."""

"""LoRA training (diffusers + peft) driven by kohya-compatible TOML, and kohya-format checkpoint export."""

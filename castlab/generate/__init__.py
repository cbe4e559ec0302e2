"""Generation with the trained LoRAs: the registry's LoRAs composed on a base model (:mod:`castlab.generate.loras`),
prompts and prompt files (:mod:`castlab.generate.prompts`), quality presets and samplers, A1111-style parameters
in every PNG (:mod:`castlab.generate.pngmeta`), and the consistency check of character LoRAs
(:mod:`castlab.generate.consistency`); :func:`castlab.generate.stage.generate` puts them together."""

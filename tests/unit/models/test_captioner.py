import json
import os
import subprocess
import sys

import numpy as np
import pytest
import regex
import torch
from outlines_core.json_schema import build_regex_from_schema
from PIL import Image

import castlab.models.captioner as captioner_module
from castlab.captions.schema import CaptionFields, SchemaError, SequenceSummary, parse_fields
from castlab.config import PROJECT_ROOT, load_config
from castlab.errors import ConfigError
from castlab.models.captioner import Captioner, load_captioner, tiny_model_dir

PROMPT = "Describe the 3D animated character in this image."


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny")


@pytest.fixture(scope="module")
def captioner(cfg) -> Captioner:
    return load_captioner(cfg)


def crops(n: int, seed: int = 0) -> list[Image.Image]:
    """Random crops of varied sizes; one RGBA and one grey to check the RGB conversion."""
    rng = np.random.default_rng(seed)
    ims = [Image.fromarray(rng.integers(0, 255, (40 + 17 * i, 30 + 23 * (i % 3), 3), dtype=np.uint8)) for i in range(n)]
    if n > 1:
        ims[1] = ims[1].convert("RGBA")
    if n > 2:
        ims[2] = ims[2].convert("L")
    return ims


def schema_prefix(text: str, schema) -> bool:
    """`text` is the start of (or a whole) JSON text the schema's regex accepts."""
    pattern = build_regex_from_schema(json.dumps(schema.model_json_schema()))
    return regex.fullmatch(pattern, text, partial=True) is not None


def test_tiny_build_is_cached_atomic_and_deterministic(tmp_path, monkeypatch, cfg):
    seed = int(cfg.seed)
    reference = tiny_model_dir(seed)
    monkeypatch.setattr(captioner_module, "cache_root", lambda what: tmp_path)
    folder = tiny_model_dir(seed)
    assert folder.parent == tmp_path and folder.name == reference.name and folder.name.startswith("tiny-qwen2vl-")
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no leftover temporary folder
    names = {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "processor_config.json"}
    assert names <= {p.name for p in folder.iterdir()}
    # same recipe and seed → byte-identical weights and tokenizer
    for name in ("model.safetensors", "tokenizer.json"):
        assert (folder / name).read_bytes() == (reference / name).read_bytes()

    def no_rebuild(*_):
        raise AssertionError("rebuilt a cached tiny captioner")

    monkeypatch.setattr(captioner_module, "_build_tiny", no_rebuild)
    assert tiny_model_dir(seed) == folder
    other = load_config(profile="tiny", extra={"seed": seed + 1})
    with pytest.raises(AssertionError, match="rebuilt"):
        load_captioner(other)  # another seed is another folder


def test_tiny_is_stamped_and_a_real_qwen2vl(captioner, cfg):
    from transformers import Qwen2VLForConditionalGeneration

    assert captioner.model_version == f"tiny-qwen2-vl-s{cfg.seed}"
    assert captioner.profile == "tiny" and captioner.device == "cpu"
    assert isinstance(captioner.model, Qwen2VLForConditionalGeneration)
    assert sum(p.numel() for p in captioner.model.parameters()) < 1_000_000
    tok = captioner.tokenizer
    for special in captioner_module.SPECIAL_TOKENS:
        assert tok.convert_ids_to_tokens(tok(special)["input_ids"]) == [special]
    text = 'A "cheerful" robot ✓ {"outfit": "red hoodie"}'
    assert tok.decode(tok(text)["input_ids"]) == text
    prompt = captioner.prompt_text(2, "Describe.", SequenceSummary)
    assert prompt.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert '"motion"' in prompt


def test_crops_give_schema_valid_json_in_batches(captioner):
    texts = captioner.generate([[im] for im in crops(3)], PROMPT, CaptionFields, max_new_tokens=320, batch_size=2)
    assert len(texts) == 3
    for text in texts:
        fields = parse_fields(text)  # every one parses (seeded tiny model, ~150-200 of the 320 tokens)
        assert list(json.loads(text)) == list(CaptionFields.model_fields)  # keys in the schema's order
        assert fields["view"] in ("front view", "three-quarter view", "side view", "back view", "unknown")
    # greedy decoding with left padding: the batch does not change what each item gets
    assert captioner.generate([[im] for im in crops(3)], PROMPT, CaptionFields, 320, batch_size=1) == texts


def test_one_item_with_several_frames(captioner):
    frames = crops(10, seed=1)
    texts = captioner.generate([frames, frames[:3]], "Describe how the character moves.", SequenceSummary, 320, 2)
    assert len(texts) == 2
    for text in texts:
        assert set(parse_fields(text, SequenceSummary)) == {"motion"}


def test_cut_off_generation_is_returned_as_is(captioner):
    (text,) = captioner.generate([crops(1)[0:1]], PROMPT, CaptionFields, max_new_tokens=12, batch_size=4)
    assert text.startswith("{") and schema_prefix(text, CaptionFields)
    with pytest.raises(SchemaError):
        parse_fields(text)
    assert captioner.generate([], PROMPT, CaptionFields, 12) == []
    with pytest.raises(ValueError, match="batch_size"):
        captioner.generate([crops(1)], PROMPT, CaptionFields, 12, batch_size=0)


def test_full_profile_missing_model_names_the_setting():
    full = load_config(profile="full", extra={"models": {"full": {"captioner": {"model": "castlab/no-such-vlm"}}}})
    with pytest.raises(ConfigError, match=r"models\.full\.captioner\.model.*local_files_only: false"):
        load_captioner(full)
    missing = load_config(profile="full", extra={"models": {"full": {"captioner": {"model": "/no/such/folder"}}}})
    with pytest.raises(ConfigError, match=r"models\.full\.captioner\.model: folder .* does not exist"):
        load_captioner(missing)
    unset = load_config(profile="full", extra={"models": {"full": {"captioner": {"model": None}}}})
    with pytest.raises(ConfigError, match=r"models\.full\.captioner\.model is not set"):
        load_captioner(unset)


def test_full_profile_loads_a_local_folder(captioner, cfg):
    folder = tiny_model_dir(int(cfg.seed))
    settings = {"model": str(folder), "device": "auto", "dtype": "auto", "max_pixels": 56 * 56 * 2}
    full = load_captioner(load_config(profile="full", extra={"models": {"full": {"captioner": settings}}}))
    assert full.model_version == folder.name and full.profile == "full" and full.device == "cpu"
    assert full.model.dtype == torch.float32  # auto on CPU
    assert full.processor.image_processor.size["longest_edge"] == 56 * 56 * 2
    (text,) = full.generate([crops(1)], PROMPT, SequenceSummary, 320)
    parse_fields(text, SequenceSummary)


def test_first_call_compiles_nothing():
    """outlines-core's torch mask kernel is ``torch.compile``d (a 20-80 s stall on its first call); the
    captioner never runs it. Checked in a fresh process with TorchDynamo enabled (conftest disables it)."""
    script = (
        "import time; from PIL import Image; from torch._dynamo.utils import counters\n"
        "from castlab.captions.schema import CaptionFields\n"
        "from castlab.config import load_config\n"
        "from castlab.models.captioner import load_captioner\n"
        "cap = load_captioner(load_config(profile='tiny'))\n"
        "start = time.perf_counter()\n"
        "cap.generate([[Image.new('RGB', (64, 48), (200, 120, 40))]], 'Describe.', CaptionFields, 40)\n"
        "print(time.perf_counter() - start, counters['frames']['total'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCHDYNAMO_DISABLE"}
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, compiled_frames = done.stdout.split()[-2:]
    assert int(compiled_frames) == 0
    assert float(seconds) < 15


def test_scored_generations_give_a_confidence_per_field(captioner):
    from castlab.captions.qc import field_confidence
    from castlab.captions.schema import CHOICE_FIELDS, TEXT_FIELDS

    generations = captioner.generate_scored([[im] for im in crops(2, seed=5)], "Describe.", CaptionFields, 320,
                                            batch_size=2)
    assert [g.text for g in generations] == captioner.generate([[im] for im in crops(2, seed=5)], "Describe.",
                                                               CaptionFields, 320, batch_size=2)
    for generation in generations:
        assert "".join(piece for piece, _ in generation.pieces).strip() == generation.text
        probs = [p for _, p in generation.pieces]
        assert all(0.0 < p <= 1.0 for p in probs) and min(probs) < 0.5 < max(probs)  # forced syntax vs choices
        confidence = field_confidence(generation)
        assert set(confidence) == {*CHOICE_FIELDS, *TEXT_FIELDS}
        assert all(0.0 < c <= 1.0 for c in confidence.values())

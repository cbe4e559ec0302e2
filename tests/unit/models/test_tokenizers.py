import open_clip
import pytest

from castlab.models.tokenizers import MODEL_MAX_LENGTH, clip_tokenizer, clip_vocab_and_merges, tokenizer_dir

SAMPLES = [
    "a photo of a cat",
    "cstlb character, 3d animated character, front view, studio lighting",
    "It's 42 dogs!  Naïve café — résumé, don't panic",
    "  Hello   WORLD\tnew\nline  ",
    "emoji 🎬 and ünïcödé, 12345 numbers",
]


@pytest.fixture(scope="module")
def tok():
    return clip_tokenizer()


def _open_clip_ids(text: str) -> list[int]:
    ids = open_clip.get_tokenizer("ViT-B-32")([text])[0].tolist()
    return ids[: ids.index(49407) + 1]  # open_clip pads with 0 after <|endoftext|>


@pytest.mark.parametrize("text", SAMPLES)
def test_ids_match_open_clip(tok, text):
    assert tok(text).input_ids == _open_clip_ids(text)


def test_reference_ids_of_openai_clip(tok):
    # the ids openai/clip-vit-large-patch14's tokenizer gives for this sentence
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_special_tokens_and_length(tok):
    assert tok.model_max_length == MODEL_MAX_LENGTH == 77
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    assert len(tok) == 49408
    padded = tok("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[3:] == [49407] * 74
    long = tok(" ".join(["word"] * 200), truncation=True, max_length=tok.model_max_length).input_ids
    assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407


def test_vocab_is_derived_from_the_bundled_merges():
    vocab, merges = clip_vocab_and_merges()
    assert len(vocab) == 49408 and len(merges) == 49152 - 256 - 2
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["".join(merges[0])] == 512


def test_built_files_are_cached(tok):
    folder = tokenizer_dir()
    stamp = (folder / "tokenizer.json").stat().st_mtime_ns
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    again = clip_tokenizer()
    assert (folder / "tokenizer.json").stat().st_mtime_ns == stamp
    again.model_max_length = 5  # copies are independent
    assert clip_tokenizer().model_max_length == 77

import numpy as np
import pytest
from PIL import Image, ImageDraw

from castlab.config import load_config
from castlab.errors import InputError
from castlab.evaluate.metrics import (
    base_embeddings,
    build_references,
    embed_training_images,
    grow_box,
    head_region,
    score_images,
)
from castlab.models.faces import Face

SIZE = 64
FACE_BOX = (24.0, 20.0, 40.0, 36.0)  # where the fake detector finds a face in a "character" image


@pytest.fixture(scope="module")
def cfg():
    return load_config(profile="tiny")


@pytest.fixture(scope="module")
def cfg_image(cfg):
    return cfg.with_overrides({"evaluation": {"identity": {"region": "image"}}})


class FakeEncoder:
    """Pixels of an 8x8 thumbnail, centred on grey, as unit vectors; counts calls."""

    model_version = "fake-encoder"

    def __init__(self):
        self.calls, self.sizes = 0, []

    def encode(self, images):
        self.calls += 1
        self.sizes.append(len(images))
        rows = [np.asarray(im.convert("RGB").resize((8, 8), Image.Resampling.BILINEAR), np.float32).ravel() - 120.0
                for im in images]
        out = np.asarray(rows, np.float32).reshape(len(images), -1)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


class FakeAnalyzer:
    """A face at FACE_BOX (scored `score`) when the image's centre pixel is not grey; ArcFace = mean colour."""

    model_version = "fake-faces"
    dim = 3

    def __init__(self, score=0.9):
        self.score, self.detections, self.embeds = score, 0, 0

    def detect(self, image_rgb, region=None):
        self.detections += 1
        h, w = image_rgb.shape[:2]
        if tuple(image_rgb[h // 2, w // 2]) == (127, 127, 127):
            return []
        return [Face(FACE_BOX, self.score, np.zeros((5, 2), np.float32))]

    def embed(self, image_rgb, face):
        self.embeds += 1
        v = image_rgb.reshape(-1, 3).mean(axis=0) - 60.0
        return v / np.linalg.norm(v)


class Refuses:
    model_version = "refuses"

    def detect(self, *args, **kwargs):
        raise AssertionError("the detector must not be used")

    embed = detect


class FakeEmbedder:
    model_version = "fake-clip"

    def __init__(self):
        self.texts = []

    def clip_t(self, images, texts):
        self.texts.append(list(texts))
        return [0.01 * len(t) for t in texts]


def character(color, shape="disc", shift=0):
    im = Image.new("RGB", (SIZE, SIZE), (127, 127, 127))
    draw = ImageDraw.Draw(im)
    box = (16 + shift, 12, 48 + shift, 44)
    (draw.ellipse if shape == "disc" else draw.rectangle)(box, fill=color)
    return im


def blank():
    return Image.new("RGB", (SIZE, SIZE), (127, 127, 127))


HERO = [character((220, 30, 30), shift=s) for s in (-2, 0, 2)]
VILLAIN = [character((30, 30, 220), "square", shift=s) for s in (-2, 0, 2)]


def render(checkpoint="ckpt-10", family="identity", prompt_id="identity/front", seed=1):
    return {"checkpoint": checkpoint, "step": None if checkpoint == "base" else 10, "weight": None, "family": family,
            "prompt_id": prompt_id, "prompt": "zorvik disc in a park", "scoring_prompt": "disc in a park",
            "seed": seed, "file": f"{checkpoint}/{prompt_id}_{seed}.png"}


def score(renders, images, cfg, analyzer=None, encoder=None, embedder=None, train=None, base=None, refs=None):
    encoder = encoder or FakeEncoder()
    analyzer = analyzer if analyzer is not None else FakeAnalyzer()
    refs = refs or build_references({"hero": HERO, "villain": VILLAIN}, encoder, analyzer, cfg)
    return score_images(renders, images, refs, "hero", encoder, analyzer, embedder or FakeEmbedder(), train, base, cfg)


# -- head region ----------------------------------------------------------------------------------------
def test_head_region_grows_the_best_face_about_its_centre(cfg):
    class Two(FakeAnalyzer):
        def detect(self, image_rgb, region=None):
            return [Face((0.0, 0.0, 4.0, 4.0), 0.6, np.zeros((5, 2))), Face(FACE_BOX, 0.9, np.zeros((5, 2)))]

    box = head_region(HERO[0], Two(), cfg)
    scale = float(cfg.evaluation.identity.head_scale)
    half = scale * 16 / 2
    assert box == pytest.approx((32 - half, 28 - half, 32 + half, 28 + half))


def test_head_box_is_clipped_and_low_scores_are_misses(cfg):
    assert grow_box((0.0, 0.0, 10.0, 10.0), 2.2, (64, 64)) == pytest.approx((0.0, 0.0, 16.0, 16.0))
    assert grow_box((60.0, 60.0, 70.0, 64.0), 1.0, (64, 64)) == pytest.approx((60.0, 57.0, 64.0, 64.0))
    assert grow_box((63.5, 10.0, 70.0, 12.0), 1.0, (64, 64)) is None
    low = FakeAnalyzer(score=float(cfg.identity.face_min_score) - 0.01)
    assert head_region(HERO[0], low, cfg) is None
    assert head_region(blank(), FakeAnalyzer(), cfg) is None


def test_region_image_ignores_the_detector(cfg_image):
    assert head_region(HERO[0], Refuses(), cfg_image) == (0.0, 0.0, 64.0, 64.0)
    assert head_region(HERO[0], None, cfg_image) == (0.0, 0.0, 64.0, 64.0)
    refs = build_references({"hero": HERO, "villain": VILLAIN}, FakeEncoder(), Refuses(), cfg_image)
    rows, _ = score([render(), render(seed=2)], [HERO[1], blank()], cfg_image, analyzer=Refuses(), refs=refs)
    assert [r["detected"] for r in rows] == [True, True] and all(r["arcface"] is None for r in rows)
    assert rows[0]["identity_margin"] > 0


def test_face_region_needs_an_analyzer(cfg):
    with pytest.raises(ValueError, match="no face analyzer"):
        head_region(HERO[0], None, cfg)


# -- identity ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("region", ["face", "image"])
def test_margin_sign_follows_whose_reference_the_image_is(cfg, region):
    cfg = cfg.with_overrides({"evaluation": {"identity": {"region": region}}})
    rows, _ = score([render(seed=1), render(seed=2)], [HERO[1], VILLAIN[1]], cfg)
    hero, villain = rows
    assert hero["detected"] and villain["detected"]
    assert hero["identity_margin"] > 0.1 and villain["identity_margin"] < -0.1
    assert hero["identity_rival"] == "villain" and villain["identity_rival"] == "villain"
    assert hero["identity_similarity"] > villain["identity_similarity"]


def test_one_character_film_margin_is_the_plain_similarity(cfg):
    encoder = FakeEncoder()
    refs = build_references({"hero": HERO}, encoder, FakeAnalyzer(), cfg)
    (row,), _ = score([render()], [HERO[1]], cfg, encoder=encoder, refs=refs)
    assert row["identity_rival"] is None and row["identity_margin"] == pytest.approx(row["identity_similarity"])


def test_a_missed_detection_is_a_failure_not_a_skip(cfg):
    renders = [render(seed=1), render(seed=2), render(seed=3)]
    rows, emb = score(renders, [HERO[1], blank(), HERO[2]], cfg)
    assert len(rows) == 3 and emb.shape[0] == 3
    missed = rows[1]
    assert missed["detected"] is False and missed["head_box"] is None and missed["arcface"] is None
    assert missed["identity_margin"] == float(cfg.evaluation.identity.miss_margin)
    assert missed["clip_t"] is not None and missed["seed"] == 2  # the other metrics are still there
    assert rows[0]["detected"] and rows[0]["identity_margin"] > missed["identity_margin"]


def test_arcface_compares_faces_with_the_reference_faces(cfg):
    analyzer = FakeAnalyzer()
    rows, _ = score([render(seed=1), render(seed=2)], [HERO[1], VILLAIN[1]], cfg, analyzer=analyzer)
    assert rows[0]["arcface"] == pytest.approx(1.0, abs=0.02)
    assert rows[1]["arcface"] < rows[0]["arcface"] - 0.1


def test_a_character_without_references_errors(cfg):
    with pytest.raises(InputError, match="'villain'") as err:
        build_references({"hero": HERO, "villain": []}, FakeEncoder(), FakeAnalyzer(), cfg, source="/refs")
    assert err.value.path == "/refs"
    with pytest.raises(InputError, match="no characters"):
        build_references({}, FakeEncoder(), FakeAnalyzer(), cfg)
    refs = build_references({"hero": HERO}, FakeEncoder(), FakeAnalyzer(), cfg, source="/refs")
    with pytest.raises(InputError, match="'sidekick'.*hero"):
        score_images([render()], [HERO[0]], refs, "sidekick", FakeEncoder(), FakeAnalyzer(), FakeEmbedder(),
                     None, None, cfg)


def test_references_use_head_regions_and_record_faces(cfg):
    refs = build_references({"hero": HERO, "villain": VILLAIN + [blank()]}, FakeEncoder(), FakeAnalyzer(), cfg)
    assert refs.dino["hero"].shape[0] == 3 and refs.dino["villain"].shape[0] == 4
    assert refs.arcface["hero"].shape == (3, 3) and refs.arcface["villain"].shape == (3, 3)
    assert refs.meta["with_face"] == {"hero": 3, "villain": 3} and refs.characters == ["hero", "villain"]


# -- other metrics ---------------------------------------------------------------------------------------------
def test_clip_t_scores_the_scoring_prompt(cfg):
    embedder = FakeEmbedder()
    renders = [render(seed=1), {**render(seed=2), "scoring_prompt": "a disc"}]
    rows, _ = score(renders, [HERO[0], HERO[1]], cfg, embedder=embedder)
    assert embedder.texts == [["disc in a park", "a disc"]]  # one batched call, never the trigger prompt
    assert [r["clip_t"] for r in rows] == pytest.approx([0.14, 0.06])


def test_memorisation_is_one_for_a_training_image(cfg):
    encoder = FakeEncoder()
    train = embed_training_images([HERO[0], VILLAIN[2]], encoder, cfg)
    rows, _ = score([render(seed=1), render(seed=2)], [HERO[0], character((30, 200, 30))], cfg,
                    encoder=encoder, train=train)
    assert rows[0]["memorisation"] == pytest.approx(1.0, abs=1e-5)
    assert rows[1]["memorisation"] < 0.95
    no_train, _ = score([render()], [HERO[0]], cfg)
    assert no_train[0]["memorisation"] is None


def test_drift_against_the_base_image_of_the_same_prompt_and_seed(cfg):
    leak = "leakage/class"
    base = [render("base", "leakage", leak, 1), render("base", "leakage", leak, 2)]
    ckpt = [render("ckpt-10", "leakage", leak, 1), render("ckpt-10", "leakage", leak, 2), render("ckpt-10")]
    images = [VILLAIN[0], HERO[0], VILLAIN[0], VILLAIN[2], HERO[1]]
    rows, emb = score(base + ckpt, images, cfg)
    assert rows[0]["drift"] == pytest.approx(0.0, abs=1e-6)
    assert rows[2]["drift"] == pytest.approx(0.0, abs=1e-6)  # identical to the base image at seed 1
    assert rows[3]["drift"] > 0.2  # seed 2's base image is the hero
    assert rows[4]["drift"] is None  # not a leakage prompt
    # the base scored in an earlier call: its embeddings passed as the lookup give the same drift
    lookup = base_embeddings(base + ckpt, emb)
    assert set(lookup) == {(leak, 1), (leak, 2)}
    again, _ = score(ckpt, images[2:], cfg, base=lookup)
    assert [r["drift"] for r in again] == pytest.approx([r["drift"] for r in rows[2:]], abs=1e-6)
    with pytest.raises(ValueError, match="no base-model image for leakage prompt 'leakage/class' seed 1"):
        score(ckpt[:1], images[2:3], cfg)


def test_encoders_are_batched_and_rows_keep_the_render(cfg):
    encoder, analyzer = FakeEncoder(), FakeAnalyzer()
    refs = build_references({"hero": HERO, "villain": VILLAIN}, encoder, analyzer, cfg)
    encoder.calls, encoder.sizes = 0, []
    renders = [render(seed=s) for s in range(6)]
    images = [HERO[s % 3] if s != 4 else blank() for s in range(6)]
    rows, emb = score(renders, images, cfg, encoder=encoder, analyzer=analyzer, refs=refs)
    assert encoder.calls == 2 and encoder.sizes == [6, 5]  # whole images, then the detected heads
    assert emb.shape == (6, 192) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert [r["seed"] for r in rows] == list(range(6)) and all("file" in r for r in rows)
    assert "identity_margin" not in renders[0]  # inputs are not modified
    with pytest.raises(ValueError, match="one image per render"):
        score(renders, images[:2], cfg, refs=refs)


def test_real_tiny_encoder_fits_the_metrics(cfg_image):
    from castlab.models.image_encoder import load_image_encoder

    encoder = load_image_encoder(cfg_image)
    rows, emb = score([render(seed=1), render("base", "leakage", "leakage/class", 1)], [HERO[1], HERO[1]],
                      cfg_image, encoder=encoder)
    assert emb.shape == (2, encoder.dim)
    assert rows[0]["identity_margin"] > 0 and rows[1]["drift"] == pytest.approx(0.0, abs=1e-5)

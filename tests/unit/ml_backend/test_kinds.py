"""The project kind of a label config (one XML parse) and how the router uses it, without loading a model."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from castlab.config import PROJECT_ROOT, load_config
from ml_backend.app import create_app
from ml_backend.errors import BackendError
from ml_backend.kinds import CaptionsConfig, IdentityConfig, MasksConfig, parse_label_config, project_kind

CONFIGS = PROJECT_ROOT / "label_configs"


def _xml(name: str) -> str:
    return (CONFIGS / name).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "kind"),
    [("masks.xml", "masks"), ("identity_instances.xml", "identity"), ("captions.xml", "captions")],
)
def test_each_project_config_maps_to_its_kind(name, kind):
    assert project_kind(_xml(name)) == kind


def test_every_project_config_is_known():
    """A new label config must be given a kind here (or be refused on purpose, as the cluster review is)."""
    assert {p.name for p in CONFIGS.glob("*.xml")} == {
        "masks.xml", "identity_instances.xml", "captions.xml", "identity_clusters.xml", "checkpoints.xml",
        "background.xml", "style.xml", "lighting.xml", "pose.xml", "expression.xml",  # dataset types: refused
        "track_frames.xml", "track_video.xml",  # castlab track predicts them (dynamic labels per object): refused
    }  # fmt: skip


def test_the_parse_gives_each_predictor_its_facts():
    assert parse_label_config(_xml("masks.xml")) == MasksConfig("mask", "image", "image", ("character",))
    assert parse_label_config(_xml("identity_instances.xml")) == IdentityConfig("identity", "crop")
    assert parse_label_config(_xml("captions.xml")) == CaptionsConfig("caption", "crop", "image")


@pytest.mark.parametrize(
    ("xml", "problem"),
    [
        (_xml("identity_clusters.xml"), "Choices 'decision', TextArea 'name', Choices 'merge_into'"),
        (_xml("checkpoints.xml"), "Choices 'verdict'"),  # a blind pick: no suggestions, on purpose
        (_xml("background.xml"), "TextArea 'type_caption'"),  # the dataset types: castlab prepare predicts them
        (_xml("pose.xml"), "KeyPointLabels 'keypoints'"),
        (_xml("track_frames.xml"), "BrushLabels 'mask' has no Label"),  # labels per track, from the task
        (_xml("track_video.xml"), "VideoRectangle 'box'"),
        ('<View><Image name="i" value="$image"/></View>', "no BrushLabels control on an Image"),
        ('<View><Text name="t" value="$text"/><Choices name="c" toName="t"/></View>', "Choices 'c'"),
        ("<View><Image name='i' value='$image'/>", "not valid XML"),
        ('<View><Image name="i" value="image"/><BrushLabels name="m" toName="i"><Label value="a"/></BrushLabels>'
         "</View>", "Image 'i' value must be $<data key>"),
        ('<View><Image name="i" value="$image"/><BrushLabels name="m" toName="i"/></View>', "has no Label"),
        ('<View><TextArea name="caption" toName="nothing"/></View>', "not attached to an Image"),
        (42, "expected the labeling config's XML text"),
    ],
)
def test_an_unknown_or_broken_config_is_a_400_naming_the_problem(xml, problem):
    with pytest.raises(BackendError) as raised:
        project_kind(xml)
    assert raised.value.status == 400 and problem in raised.value.message


@pytest.fixture
def router(workspace) -> TestClient:
    app = create_app(
        load_config(profile="tiny"), labelstudio=lambda: None,
        segmenter_factory=lambda cfg: pytest.fail("segmenter loaded"),
        identity_loader=lambda run_dir: pytest.fail("identity vectors loaded"),
        captioner_factory=lambda cfg: pytest.fail("captioner loaded"),
    )  # fmt: skip
    return TestClient(app)


def test_predict_with_an_unknown_config_answers_400_and_loads_nothing(router):
    tasks = [{"id": 1, "data": {"image": "/data/local-files/?d=a.png"}}]
    response = router.post("/predict", json={"tasks": tasks, "label_config": _xml("identity_clusters.xml")})
    assert response.status_code == 400 and "not a project the backend predicts for" in response.json()["error"]
    broken = router.post("/predict", json={"tasks": tasks, "label_config": "<View>"})
    assert broken.status_code == 400 and "not valid XML" in broken.json()["error"]
    assert router.get("/health").json()["status"] == "UP"


@pytest.mark.parametrize("config", ["masks.xml", "captions.xml", "identity_clusters.xml"])
def test_a_webhook_goes_to_its_project_predictor_only(router, config):
    """Only the identity predictor learns; a caption or mask annotation never loads identity vectors."""
    annotation = {"id": 9, "result": [{"from_name": "caption", "to_name": "crop", "type": "textarea",
                                       "value": {"text": ["cstlb character"]}}]}
    hook = {"action": "ANNOTATION_CREATED", "annotation": annotation,
            "project": {"id": 4, "label_config": _xml(config)},
            "task": {"id": 5, "data": {"castlab_run": "runs/r1", "instance": "inst:a:0"}}}
    response = router.post("/webhook", json=hook)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "action": "ANNOTATION_CREATED", "learnt": False}

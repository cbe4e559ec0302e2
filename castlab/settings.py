"""Typed settings: one pydantic model per section of ``configs/defaults.yaml``.

The YAML files hold every default; these models hold the types and the ranges. Fields have no
defaults of their own, so a value the code reads always comes from ``configs/``. Every model
forbids unknown keys: a misspelt key fails when the config is loaded, before any work, and
:func:`castlab.config.load_config` names the key and the file it came from.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Probability = Field(ge=0.0, le=1.0)


class Section(BaseModel):
    """A settings section: strict about unknown keys, immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class WorkspaceSettings(Section):
    runs_dir: str


class FramesSettings(Section):
    mode: Literal["scene", "interval", "hybrid"]
    interval_seconds: float = Field(gt=0)
    scene_threshold: float = Field(gt=0.0, le=2.55)  # x100 = PySceneDetect's ContentDetector threshold
    min_scene_length: int = Field(ge=0)
    frames_per_shot: int = Field(ge=1)
    hybrid_window: int | None = Field(ge=0)
    workers: Literal["auto"] | int
    segment_min_frames: int = Field(ge=1)
    image_format: Literal["jpg", "jpeg", "png", "webp"]
    jpeg_quality: int = Field(ge=1, le=100)

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value != "auto" and value < 1:
            raise ValueError("must be 'auto' or an integer >= 1")
        return value


class QualitySettings(Section):
    blur_threshold: float = Field(ge=0)
    min_width: int = Field(ge=1)
    min_height: int = Field(ge=1)
    brightness_min: float = Field(ge=0, le=255)
    brightness_max: float = Field(ge=0, le=255)
    contrast_min: float = Field(ge=0)

    @model_validator(mode="after")
    def _brightness(self) -> QualitySettings:
        if self.brightness_min >= self.brightness_max:
            raise ValueError("brightness_min must be below brightness_max")
        return self


class SafetySettings(Section):
    enabled: bool  # false: no safety model is loaded, no frame is scored
    backend: Literal["classifier", "clip"]  # classifier: models.<profile>.safety; clip: zero-shot with the embedder
    threshold: float = Probability  # a frame whose NSFW score is above this is rejected (reason nsfw)
    batch_size: int = Field(ge=1)
    unsafe_labels: list[str] = Field(min_length=1)  # classifier labels whose probabilities make the score
    clip_unsafe_prompts: list[str] = Field(min_length=1)
    clip_safe_prompts: list[str] = Field(min_length=1)


class PoseSettings(Section):
    """Pose geometry (castlab.pose.geometry): limits in torso lengths (shoulder centre to hip centre) and degrees."""

    min_confidence: float = Probability  # a keypoint below this is missing
    lying_torso_deg: float = Field(gt=0, le=180)  # torso further than this from vertical: category other
    sitting_thigh_deg: float = Field(gt=0, le=180)  # both thighs further than this from vertical: sitting
    walking_stride: float = Field(ge=0)  # horizontal ankle spread from which a pose is walking ...
    running_stride: float = Field(ge=0)  # ... and running
    lifted_foot: float = Field(ge=0)  # one ankle this much above the other: a foot off the ground (running)
    side_shoulders: float = Field(ge=0)  # shoulder width below this: a side view


class LightingSettings(Section):
    """Lighting measures (castlab.lighting.features)."""

    low_key_below: float = Probability  # mean luma (sRGB scale 0..1) below this: low-key
    high_key_above: float = Probability  # ... above this: high-key
    warm_below_k: float = Field(gt=0)  # colour temperature (kelvin) below this: warm
    cool_above_k: float = Field(gt=0)  # ... above this: cool
    min_direction: float = Field(ge=0)  # luminance-centroid offset (half-frame units) below this: frontal light


class BackgroundsSettings(Section):
    """The background dataset (castlab.backgrounds)."""

    max_character_score: float = Probability  # open_clip character probability of a whole background: at or
    # above this a character is left in it (rejected, reason character_score)


class ExpressionSettings(Section):
    """The expression dataset (castlab.expression): face crops and their expression labels."""

    labels: dict[str, list[str]] = Field(min_length=1)  # label → caption words that mean it (besides "other")
    prompt: str  # the zero-shot prompt per label, {label} filled in
    context: float = Field(ge=0)  # face crop padding on every side, in face-box sizes
    min_face_px: int = Field(ge=1)  # a face box with a shorter side is too small
    min_sharpness: float = Field(ge=0)  # variance of the Laplacian of the face crop below this: blurred
    max_occlusion: float = Probability  # share of the face box outside the character's own mask above this


class TypeDatasetSettings(Section):
    """One non-character dataset type (castlab.typed): its trigger, captions, size, balance and review project."""

    trigger: str | None  # the token the LoRA learns the type under; null: a stable made-up rare token
    class_word: str = Field(min_length=1)  # follows the trigger in every caption ("scene", "style", ...)
    medium: str = Field(min_length=1)  # the caption's lead after the trigger, and the suite's {medium}
    prompt: str = Field(min_length=1)  # what the VLM is asked of each image (under the type's schema)
    target_size_min: int = Field(ge=1)  # below this many images, num_repeats fills the epoch (and "small")
    target_size_max: int = Field(ge=1)
    balance: str = Field(min_length=1)  # the record label whose values share the selection equally
    min_quality: float = Probability  # sharpness (variance of the Laplacian / dataset.sharpness_ref, capped at 1)
    scene_min_size: int = Field(ge=2)  # smallest scene cluster of the image embeddings (smaller: scene "other")
    title: str = Field(min_length=1)  # the Label Studio review project

    @model_validator(mode="after")
    def _sizes(self) -> TypeDatasetSettings:
        if self.target_size_max < self.target_size_min:
            raise ValueError("target_size_max must be >= target_size_min")
        return self


class TypesSettings(Section):
    """The dataset types beyond characters (``castlab prepare|dataset --type``)."""

    background: TypeDatasetSettings
    style: TypeDatasetSettings
    lighting: TypeDatasetSettings
    pose: TypeDatasetSettings
    expression: TypeDatasetSettings


class DedupSettings(Section):
    phash_max_distance: int = Field(ge=0, le=64)
    ssim_min: float = Field(ge=-1.0, le=1.0)
    ssim_size: int = Field(ge=8)


class BodyBox(Section):
    face_widths: float = Field(gt=0)
    face_heights: float = Field(gt=0)


class SegmentationSettings(Section):
    alpha_threshold: float = Probability
    min_size: int = Field(ge=0)
    min_area_fraction: float = Field(ge=0.0)  # above 1 keeps nothing
    max_instances_per_frame: int = Field(ge=1)
    points_per_side: int = Field(ge=1)
    pred_iou_thresh: float = Probability
    stability_score_thresh: float = Probability
    stability_score_offset: float
    min_size_reference_height: int = Field(ge=1)
    dedup_iou: float = Probability
    points_per_batch: int = Field(ge=1)
    chunk_frames: int = Field(ge=1)
    embedding_cache_mb: int = Field(ge=0)
    evidence: list[Literal["face", "person", "insightface"]]
    min_face_fraction: float = Field(gt=0.0, le=1.0)
    body_box: BodyBox
    character_prompt: str = Field(min_length=1)
    non_character_prompts: list[str] = Field(min_length=1)
    character_min_score: float = Probability
    background_inpaint: Literal["telea", "lama", "none"]
    background_dilate_px: int = Field(ge=0)
    background_inpaint_radius: int = Field(ge=1)


class PropagationSettings(Section):
    max_frames: int = Field(ge=1)


class GroundingSettings(Section):
    """Text-grounded prompts: an open-vocabulary detector's boxes for a text query prompt SAM2."""

    box_threshold: float = Probability  # a box counts when its best token score reaches this
    text_threshold: float = Probability  # tokens scoring at least this name the box's label
    max_boxes: int = Field(ge=1)  # the most boxes (objects) one query prompts, best first


class ShowcaseSettings(Section):
    """Showcase videos: frames → H.264 with ffmpeg, optional frame interpolation, optional overlays."""

    fps: float | None = Field(default=None, gt=0)  # None: the source video's rate
    interpolate: Literal["none", "minterpolate", "rife"]
    target_fps: float = Field(gt=0)  # the rate interpolation brings the video to
    rife_command: list[str] | None = None  # argv of a RIFE tool: {input} {output} {factor} {frames}
    overlay_alpha: float = Probability  # opacity of mask overlays
    crf: int = Field(ge=0, le=51)  # x264 quality (lower: better, larger)


class VaceSettings(Section):
    """``castlab export-video --format vace``: Wan VACE training clips (DiffSynth-Studio's layout)."""

    max_side: int = Field(ge=16)  # the longer side of a clip, rounded down to a multiple of 16
    max_frames: int = Field(ge=5)  # the most frames of a clip (rounded down to 4k + 1)
    fps: float | None = Field(default=None, gt=0)  # None: the source video's rate
    keep_region: bool  # vace_video keeps the object (True) or zeroes its region (False)
    prompt: str  # the clip's prompt; {name} is the object's identity (or query), {type} its label


class VideoSettings(Section):
    grounding: GroundingSettings
    showcase: ShowcaseSettings
    vace: VaceSettings


class IdentitySettings(Section):
    face_min_score: float = Probability
    face_box_margin: float = Field(ge=0)
    view_front_max_yaw: float = Field(ge=0, le=90)
    view_three_quarter_max_yaw: float = Field(ge=0, le=90)
    suggest_k: int = Field(ge=1)
    suggest_min_similarity: float = Field(ge=-1.0, le=1.0)
    clip_join_min_similarity: float = Field(ge=-1.0, le=1.0)
    subcluster_distance: float = Field(ge=0.0, le=2.0)
    chunk_instances: int = Field(ge=1)

    @model_validator(mode="after")
    def _views(self) -> IdentitySettings:
        if self.view_front_max_yaw > self.view_three_quarter_max_yaw:
            raise ValueError("view_front_max_yaw must not exceed view_three_quarter_max_yaw")
        return self


class ClusteringSettings(Section):
    method: Literal["hdbscan", "kmeans", "agglomerative"]
    min_cluster_size: int = Field(ge=2)
    min_samples: int | None = Field(ge=1)
    metric: Literal["cosine", "euclidean"]
    pca_components: int = Field(ge=0)
    umap_components: int = Field(ge=2)
    umap_neighbors: int = Field(ge=2)
    umap_min_dist: float = Field(ge=0.0, le=1.0)
    kmeans_clusters: int = Field(ge=1)
    agglomerative_distance: float = Field(gt=0.0, le=2.0)
    merge_similarity: float | None = Field(ge=-1.0, le=1.0)
    member_min_similarity: float = Field(ge=-1.0, le=1.0)


class DatasetSettings(Section):
    target_size_min: int = Field(ge=1)
    target_size_max: int = Field(ge=1)
    trigger_token: str = Field(min_length=1)
    class_word: str = Field(min_length=1)
    caption_prefix: str
    caption_min_tokens: int = Field(ge=1, le=77)
    caption_max_tokens: int = Field(ge=1, le=77)
    color_jitter: bool
    flip_aug: bool
    resolution: int = Field(ge=8)
    val_fraction: float = Field(ge=0.0, lt=1.0)
    background_rgb: list[int] = Field(min_length=3, max_length=3)
    min_instances: int = Field(ge=1)
    triggers: dict[str, str]
    class_words: dict[str, str]
    view_quotas: dict[str, float]
    max_similarity: float = Field(gt=-1.0, le=1.0)
    min_quality: float = Probability
    sharpness_ref: float = Field(gt=0)
    caption_flag_penalty: float = Probability
    context_margin: float = Field(ge=0.0, le=2.0)
    max_upscale: float = Field(ge=1.0)
    background: Literal["original", "neutral"]

    @field_validator("background_rgb")
    @classmethod
    def _rgb(cls, value: list[int]) -> list[int]:
        if any(not 0 <= c <= 255 for c in value):
            raise ValueError("every channel must be 0..255")
        return value

    @field_validator("view_quotas")
    @classmethod
    def _quotas(cls, value: dict[str, float]) -> dict[str, float]:
        if not value or any(v < 0 for v in value.values()) or sum(value.values()) <= 0:
            raise ValueError("view shares must be >= 0 with a positive sum")
        if "unknown" not in value:
            raise ValueError("needs an 'unknown' share (views without a quota of their own count as unknown)")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> DatasetSettings:
        if self.target_size_min > self.target_size_max:
            raise ValueError("target_size_min must not exceed target_size_max")
        if self.caption_min_tokens > self.caption_max_tokens:
            raise ValueError("caption_min_tokens must not exceed caption_max_tokens")
        return self


class TrainingSettings(Section):
    template: str
    clip_skip: int = Field(ge=1)
    kohya: dict[str, Any]


class EvaluationIdentitySettings(Section):
    region: Literal["face", "image"]  # face: the detector's head box (a miss is a failure); image: the whole image
    head_scale: float = Field(ge=1.0)  # the face box grown by this factor (about the face's centre) = the head
    miss_margin: float = Field(ge=-2.0, le=0.0)  # identity margin of an image where no face was found
    references: int = Field(ge=1)  # reviewed reference crops per character (view-balanced sample)


class EvaluationGates(Section):
    max_leakage_gain: float  # identity margin on trigger-free prompts, minus the base model's
    max_drift: float = Field(ge=0.0, le=2.0)  # 1 - cosine to the base model's image on trigger-free prompts
    max_memorisation: float = Field(ge=-1.0, le=1.0)  # nearest training image similarity
    min_diversity_ratio: float = Field(ge=0.0)  # diversity across seeds / the base model's


class EvaluationSettings(Section):
    suite: str = Field(min_length=1)  # configs/evaluation/<suite>.yaml, or a path to a suite YAML
    seeds: list[int] = Field(min_length=1)
    steps: int = Field(ge=1)
    guidance_scale: float = Field(ge=0)
    lora_weights: list[float] = Field(min_length=1)  # the first is the one ranked
    batch_size: int = Field(ge=1)  # images per pipeline call
    caption_prompts: int = Field(ge=0)  # training captions echoed as prompts
    bootstrap: int = Field(ge=10)  # resamples of the seeds for the intervals
    pairs_per_matchup: int = Field(ge=1)  # blind pairs per two checkpoints in the checkpoints review
    identity: EvaluationIdentitySettings
    gates: EvaluationGates


SAMPLERS = ("euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "pndm")


class GenerationPreset(Section):
    """A quality preset of ``castlab generate``: sampler, steps, CFG and the size relative to the base model's."""

    steps: int = Field(ge=1)
    sampler: Literal[SAMPLERS]  # type: ignore[valid-type]
    guidance_scale: float = Field(ge=0)
    size_scale: float = Field(gt=0, le=4)  # × the base model's training resolution (rounded to 8 px)


class ConsistencySettings(Section):
    threshold: float = Probability  # normalised identity score below which an image is off-model
    retries: int = Field(ge=0)  # an off-model image is generated again with the next seed up to this many times


class GenerationSettings(Section):
    """``castlab generate``: the registered LoRAs at work."""

    preset: str = Field(min_length=1)  # a key of presets
    presets: dict[str, GenerationPreset] = Field(min_length=1)
    negative_prompt: str
    batch_size: int = Field(ge=1)  # images per pipeline call
    cpu_offload: bool  # sequential CPU offload: the least GPU memory, the slowest
    consistency: ConsistencySettings
    control_scale: float = Field(ge=0)  # ControlNet conditioning scale (--control-scale)
    canny: list[int] = Field(min_length=2, max_length=2)  # OpenCV Canny thresholds (low, high) of canny conditioning

    @model_validator(mode="after")
    def _known_preset(self) -> GenerationSettings:
        if self.preset not in self.presets:
            raise ValueError(f"preset {self.preset!r} is not one of presets: {sorted(self.presets)}")
        return self


class CaptionsSettings(Section):
    style: Literal["natural", "tags", "auto"]
    batch_size: int = Field(ge=1)
    chunk_size: int = Field(ge=1)
    max_side: int = Field(ge=16)
    max_new_tokens: int = Field(ge=1)
    prompt: str = Field(min_length=1)
    cluster_samples: int = Field(ge=1)
    invariant_fields: list[str]
    field_order: list[str]
    uncertain_terms: list[str]
    neutral_terms: dict[str, str | None]
    hallucination_terms: list[str]
    min_clip_score: float | None = Field(ge=-1.0, le=1.0)
    min_choice_confidence: float | None = Probability
    min_text_confidence: float | None = Probability
    sequence_frames: int = Field(ge=1)


class ServiceSettings(Section):
    host: str
    port: int = Field(ge=1, le=65535)
    startup_timeout_s: float = Field(gt=0)


class LabelStudioSettings(ServiceSettings):
    masks_project_title: str = Field(min_length=1)
    identity_instances_title: str = Field(min_length=1)
    identity_clusters_title: str = Field(min_length=1)
    captions_title: str = Field(min_length=1)
    checkpoints_title: str = Field(min_length=1)
    track_frames_title: str = Field(min_length=1)  # castlab track: one task per frame, a brush label per object
    tracks_title: str = Field(min_length=1)  # castlab track: one video task per tracked shot


class PrefectSettings(ServiceSettings):
    work_pool: str = Field(min_length=1)
    worker_port: int = Field(ge=1, le=65535)
    worker_poll_s: float = Field(gt=0)


class OrchestrationSettings(Section):
    task_runner: Literal["thread", "dask", "ray"]
    address: str | None
    workers: int = Field(ge=1)
    gpus_per_task: float = Field(ge=0)


class ReviewsSettings(ServiceSettings):
    complete_share: float = Field(gt=0.0, le=1.0)
    wait_timeout_s: int = Field(ge=0)  # how long a pipeline run waits for one review (0: no limit)


class MlBackendSettings(ServiceSettings):
    batch_budget_s: float = Field(ge=0)  # 0: one task per request
    preload_captioner: bool


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url.strip()).password
    except ValueError:
        return None


class DatabaseSettings(Section):
    url: str  # "" (SQLite) or postgresql://user@host:port; a password goes in CASTLAB_DATABASE_URL instead
    labelstudio_db: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    prefect_db: str = Field(pattern=r"^[A-Za-z0-9_]+$")

    @model_validator(mode="before")
    @classmethod
    def _redact(cls, data: Any) -> Any:
        """Mask a password before validation, so the error that refuses it (and names the input) cannot show it."""
        url = data.get("url") if isinstance(data, dict) else None
        if isinstance(url, str) and _url_password(url):
            parts = urlsplit(url.strip())
            user = parts.netloc.rpartition("@")[0].partition(":")[0]
            data = {**data, "url": urlunsplit(parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}"))}
        return data

    @field_validator("url")
    @classmethod
    def _postgres_without_password(cls, value: str) -> str:
        try:
            scheme = urlsplit(value.strip()).scheme
        except ValueError as exc:
            raise ValueError(f"not a postgresql://user@host:port URL ({exc})") from None
        if value.strip() and scheme not in ("postgresql", "postgres"):
            raise ValueError("must be empty or a postgresql://user@host:port URL")
        if _url_password(value):  # the resolved config is copied into every run folder: no secret may live there
            raise ValueError("must not hold a password (set CASTLAB_DATABASE_URL instead, or use ~/.pgpass)")
        return value


# --- model roles: the keys differ by profile, so every field is optional; a loader checks what it needs.


class SegmenterModel(Section):
    arch: str
    image_size: int = Field(default=1024, ge=64)
    checkpoint: str | None = None
    alpha_threshold: float | None = Field(default=None, ge=0.0, le=1.0)  # overrides segmentation.alpha_threshold
    character_min_score: float | None = Field(default=None, ge=0.0, le=1.0)  # overrides segmentation.*


class EmbedderModel(Section):
    arch: str
    pretrained: str | None = None
    max_similarity: float | None = Field(default=None, gt=-1.0, le=1.0)  # overrides dataset.max_similarity


class CaptionerModel(Section):
    arch: str | None = None       # tiny: the tiny architecture
    model: str | None = None      # full: a hub id or a local folder
    revision: str | None = None
    local_files_only: bool = True
    dtype: str = "auto"
    device: str = "auto"
    max_pixels: int | None = Field(default=None, ge=1)
    min_clip_score: float | None = Field(default=None, ge=-1.0, le=1.0)  # override captions.* for this profile
    min_choice_confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    min_text_confidence: float | None = Field(default=None, ge=0.0, le=1.0)


class FacesModel(Section):
    pack: str | None = None
    root: str | None = None
    det_size: int | None = Field(default=None, ge=32)
    det_thresh: float = Probability


class BaseModelSettings(Section):
    arch: str  # sd15 | sdxl (tiny: sd15-tiny | sdxl-tiny)
    path: str | None = None  # diffusers folder, hub id or single-file .safetensors
    config: str | None = None  # single file, offline: a local diffusers folder of the same family (its configs)
    local_files_only: bool = True
    resolution: int | None = Field(default=None, ge=8)
    kohya: dict[str, Any] = Field(default_factory=dict)


class ImageEncoderModel(Section):
    arch: str | None = None  # tiny: the tiny DINOv2 configuration
    model: str | None = None  # full: a hub id or a local folder of a transformers Dinov2Model
    revision: str | None = None
    local_files_only: bool = True


class SafetyModel(Section):
    arch: str | None = None  # tiny: the tiny ViT classifier
    model: str | None = None  # full: a hub id or local folder of a transformers image-classification model
    revision: str | None = None
    local_files_only: bool = True
    device: str = "auto"  # auto: cuda when available, else cpu (the tiny profile runs on cpu)


class PoseModel(Section):
    arch: str | None = None  # tiny: the tiny ViTPose configuration
    model: str | None = None  # full: a hub id or local folder of a transformers VitPoseForPoseEstimation
    revision: str | None = None
    local_files_only: bool = True
    device: str = "auto"  # auto: cuda when available, else cpu (the tiny profile runs on cpu)


class ControlNetModels(Section):
    """ControlNet weights per kind for one base family: hub ids or folders (full); the tiny profile builds them."""

    pose: str | None = None
    depth: str | None = None
    canny: str | None = None


class ControlNetSettings(Section):
    arch: str | None = None  # tiny: the tiny ControlNet recipe (from the tiny base UNet, seeded random weights)
    sd15: ControlNetModels = ControlNetModels()
    sdxl: ControlNetModels = ControlNetModels()
    local_files_only: bool = True


class ProfileModels(Section):
    image_encoder: ImageEncoderModel
    segmenter: SegmenterModel
    embedder: EmbedderModel
    captioner: CaptionerModel
    faces: FacesModel
    base_model: BaseModelSettings
    safety: SafetyModel
    pose: PoseModel
    grounder: PoseModel  # the same shape: tiny arch, or a transformers Grounding DINO by hub id or folder
    depth: PoseModel  # the same shape: tiny arch, or a transformers depth-estimation model by hub id or folder
    controlnet: ControlNetSettings


class ModelsSettings(Section):
    tiny: ProfileModels
    full: ProfileModels


class Settings(Section):
    """The whole resolved configuration."""

    profile: Literal["tiny", "full"]
    seed: int = Field(ge=0)
    workspace: WorkspaceSettings
    frames: FramesSettings
    quality: QualitySettings
    safety: SafetySettings
    dedup: DedupSettings
    backgrounds: BackgroundsSettings
    expression: ExpressionSettings
    pose: PoseSettings
    lighting: LightingSettings
    types: TypesSettings
    segmentation: SegmentationSettings
    propagation: PropagationSettings
    video: VideoSettings
    identity: IdentitySettings
    clustering: ClusteringSettings
    dataset: DatasetSettings
    training: TrainingSettings
    evaluation: EvaluationSettings
    generation: GenerationSettings
    captions: CaptionsSettings
    labelstudio: LabelStudioSettings
    prefect: PrefectSettings
    orchestration: OrchestrationSettings
    reviews: ReviewsSettings
    ml_backend: MlBackendSettings
    database: DatabaseSettings
    models: ModelsSettings

"""Caption stage of a run: identified instances → VLM schema captions → assembled captions → QC flags.

For every kept instance with a reviewed identity (``identity_state`` reviewed or cluster):

1. the captioner fills :class:`~castlab.captions.schema.CaptionFields` for its crop under constrained
   decoding; output that still fails the schema is recorded as ``schema_error``;
2. uncertain fields — an "unknown"-like answer, or a value the model gave a low probability
   (``captions.min_choice_confidence`` / ``min_text_confidence``) — are replaced with neutral terms
   (:mod:`castlab.captions.qc`); ``character`` is set to the reviewed identity (never asked of the model);
3. per identity, the majority of its invariant fields (and its usual outfit) is computed, and 3-5
   view-balanced instances are described together (the cluster label reviewers see next to the identity);
4. the caption is assembled (trigger + class word first, then what varies; 40-77 CLIP tokens), scored
   against its image with open_clip and flagged (:func:`castlab.captions.qc.qc_flags`).

An instance without a reviewed identity (``no_identity``) or with an unreadable crop (``image_error``) gets
a record too: nothing is dropped silently. Outputs in ``<run>/captions/``: ``captions.jsonl`` (one record
per instance), ``cluster_labels.json``, the report (:mod:`castlab.captions.report`) and, on request,
``sequences.json`` (one motion description per shot). Manifest columns: ``caption_pred``,
``caption_status``, ``caption_flags``, ``caption_priority``, ``caption_tokens``, ``caption_clip_score``.

Steps 1-2 run a chunk of instances at a time (:func:`process`, ``captions.chunk_size`` per chunk), which a flow
hands to workers; steps 3-4 need every record (:func:`finish_captions`). :func:`caption_run` does it all here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from castlab.captions.qc import (
    field_confidence,
    identity_majorities,
    neutralise,
    neutralise_unsure,
    qc_flags,
    review_priority,
)
from castlab.captions.schema import (
    CaptionFields,
    ClusterDescription,
    SchemaError,
    SequenceSummary,
    caption_record,
    parse_fields,
)
from castlab.captions.text import assemble_caption, resolve_style
from castlab.config import Config
from castlab.errors import ConfigError, InputError
from castlab.identity.embed import square_on_background, view_balanced_sample
from castlab.layers import media_path, open_rgba
from castlab.manifest import Manifest, row_text
from castlab.pictures import fit_within
from castlab.rows import chunked
from castlab.workspace import read_jsonl, write_json_atomic, write_text_atomic

CAPTIONS_DIR = "captions"
RECORDS_NAME = "captions.jsonl"
LABELS_NAME = "cluster_labels.json"
SEQUENCES_NAME = "sequences.json"
IDENTIFIED_STATES = ("reviewed", "cluster")
CLUSTER_PROMPT = ("These images show one 3D animated character. Describe what it usually wears, its look and "
                  "the typical lighting, in short phrases.")
SEQUENCE_PROMPT = ("These frames come from one shot of a 3D animated film, in order. Describe how the character "
                   "moves through the shot in one sentence.")


@dataclass
class CaptionSettings:
    style: str
    prompt: str
    batch_size: int
    max_new_tokens: int
    cluster_samples: int
    sequence_frames: int
    background: tuple[int, int, int]
    chunk_size: int = 64
    max_side: int = 512

    @classmethod
    def from_config(cls, cfg: Config, style: str | None = None) -> CaptionSettings:
        style = resolve_style(cfg, style)
        samples = int(cfg.captions.cluster_samples)
        frames = int(cfg.captions.sequence_frames)
        if not 3 <= samples <= 5:
            raise ConfigError(f"captions.cluster_samples must be 3-5, got {samples}")
        if not 8 <= frames <= 12:
            raise ConfigError(f"captions.sequence_frames must be 8-12, got {frames}")
        return cls(style=style, prompt=str(cfg.captions.prompt), batch_size=int(cfg.captions.batch_size),
                   max_new_tokens=int(cfg.captions.max_new_tokens), cluster_samples=samples,
                   sequence_frames=frames, background=tuple(int(c) for c in cfg.dataset.background_rgb),
                   chunk_size=int(cfg.captions.chunk_size), max_side=int(cfg.captions.max_side))


def identified(row: dict[str, Any]) -> str | None:
    """The instance's reviewed identity, or None (unreviewed, noise, split, not a character)."""
    identity = row_text(row.get("identity"))
    return identity if identity and row_text(row.get("identity_state")) in IDENTIFIED_STATES else None


def load_crop(value: Any, background: tuple[int, int, int], max_side: int | None = None) -> Image.Image:
    """An instance's RGBA crop composited on `background` (square, RGB, at most `max_side` pixels a side);
    :class:`InputError` when it is missing, unreadable or empty (no visible pixel)."""
    path = media_path(value)
    return caption_image(open_rgba(path, "instance crop"), background, max_side, path or "-")


def caption_image(crop: Image.Image, background: tuple[int, int, int], max_side: int | None,
                  where: Path | str) -> Image.Image:
    """What the captioner sees of an RGBA crop: composited on `background`, square, at most `max_side` pixels
    a side; :class:`InputError` (naming `where`) when the crop is empty (no visible pixel)."""
    crop = crop.convert("RGBA")
    if min(crop.size) < 2 or crop.getchannel("A").getextrema()[1] == 0:
        raise InputError(where, f"instance crop is empty ({crop.width}x{crop.height}, no visible pixel)")
    square = square_on_background(crop, background)
    return fit_within(square, max_side) if max_side else square


def base_record(row_id: str, identity: str | None, settings: CaptionSettings, model_version: str) -> dict[str, Any]:
    return {"row_id": row_id, "identity": identity, "status": "ok", "error": None, "fields": None, "caption": None,
            "tokens": None, "dropped": [], "flags": [], "clip_score": None, "style": settings.style,
            "model_version": model_version, "reviewed_caption": None, "edited": None}


def generate_fields(captioner: Any, images: Sequence[Image.Image], records: Sequence[dict[str, Any]],
                    settings: CaptionSettings, cfg: Config, progress: bool = False) -> None:
    """Fill each record's ``fields`` (with ``character`` = its identity) and uncertain flags, or mark it
    ``schema_error`` with the problem and the start of the raw output."""
    generations = captioner.generate_scored([[im] for im in images], settings.prompt, CaptionFields,
                                            settings.max_new_tokens, batch_size=settings.batch_size,
                                            progress=progress)
    for record, generation in zip(records, generations, strict=True):
        try:
            fields = parse_fields(generation.text)
        except SchemaError as exc:
            record.update(status="schema_error", error=f"model output fails the caption schema: {exc}",
                          raw_output=generation.text[:400])
            continue
        confidence = field_confidence(generation)
        fields, uncertain = neutralise(fields, cfg)
        fields, unsure = neutralise_unsure(fields, confidence, cfg)
        record["fields"] = caption_record(fields, str(record["identity"]))
        record["field_flags"] = sorted({*uncertain, *unsure})
        record["confidence"] = confidence


def finish_records(records: Sequence[dict[str, Any]], images: Sequence[Image.Image], cfg: Config,
                   settings: CaptionSettings, usual: dict[str, dict[str, str]], known: Sequence[str],
                   embedder: Any = None) -> None:
    """Assemble, score and flag every record that has fields (in place)."""
    done = [(r, im) for r, im in zip(records, images, strict=True) if r.get("fields")]
    for record, _ in done:
        assembled = assemble_caption(record["fields"], cfg, settings.style, usual.get(record["identity"]))
        record.update(caption=assembled.text, tokens=assembled.tokens, dropped=list(assembled.dropped),
                      _assembled=assembled)
    scores: list[float | None] = [None] * len(done)
    if embedder is not None and done:
        scores = [round(s, 4) for s in embedder.clip_t([im for _, im in done], [r["caption"] for r, _ in done])]
    for (record, _), score in zip(done, scores, strict=True):
        assembled = record.pop("_assembled")
        flags = qc_flags(record["fields"], identity=record["identity"], known_identities=known,
                         usual=usual.get(record["identity"]), clip_score=score, caption=assembled, cfg=cfg)
        record.update(clip_score=score, flags=sorted(set(record.get("field_flags") or []) | set(flags)))


def cluster_labels(captioner: Any, by_identity: dict[str, list[dict[str, Any]]], usual: dict[str, dict[str, str]],
                   settings: CaptionSettings, seed: int, crop: Callable[[str], Image.Image]) -> dict[str, Any]:
    """Per identity: 3-5 view-balanced instances (``crop(row_id)`` loads each) described together
    (``description`` etc.), its usual field values and the sampled row ids. A description failing the
    schema is recorded with its error."""
    names = sorted(by_identity)
    samples = {n: [r["row_id"] for r in view_balanced_sample(by_identity[n], settings.cluster_samples, seed)]
               for n in names}
    texts = captioner.generate([[crop(row_id) for row_id in samples[n]] for n in names], CLUSTER_PROMPT,
                               ClusterDescription, settings.max_new_tokens, batch_size=settings.batch_size)
    labels: dict[str, Any] = {}
    for name, text in zip(names, texts, strict=True):
        entry: dict[str, Any] = {"samples": samples[name], "usual": usual.get(name, {}),
                                 "instances": len(by_identity[name])}
        try:
            entry.update(parse_fields(text, ClusterDescription), status="ok")
        except SchemaError as exc:
            entry.update(status="schema_error", error=str(exc))
        labels[name] = entry
    return labels


def label_text(label: dict[str, Any] | None) -> str:
    """One line for reviewers: the cluster description, else the usual values."""
    if not label:
        return ""
    if label.get("status") == "ok":
        return f"{label['description']} (wears {label['outfit']}; {label['look']}; usually {label['lighting']})"
    return "; ".join(f"{k}: {v}" for k, v in sorted((label.get("usual") or {}).items()))


@dataclass
class CaptionModels:
    """What captioning needs: the VLM and open_clip (for the caption-image score)."""

    captioner: Any
    embedder: Any = None


def load_models(cfg: Config, captioner: Any = None, embedder: Any = None) -> CaptionModels:
    """The captioner and open_clip of the active profile (those given are used as they are)."""
    if captioner is None:
        from castlab.models.captioner import load_captioner

        captioner = load_captioner(cfg)
    if embedder is None:
        from castlab.models.embedder import load_embedder

        embedder = load_embedder(cfg)
    return CaptionModels(captioner, embedder)


def new_record(row: dict[str, Any], settings: CaptionSettings, model_version: str) -> dict[str, Any]:
    """A row's caption record before generation (``no_identity`` already settled)."""
    record = base_record(str(row["row_id"]), identified(row), settings, model_version)
    record["view"] = row_text(row.get("view")) or None
    if record["identity"] is None:
        state = row_text(row.get("identity_state")) or "none"
        record.update(status="no_identity", error=f"no reviewed identity (identity_state {state})")
    return record


def process(rows: Sequence[dict[str, Any]], cfg: Config, models: CaptionModels, *, style: str | None = None,
            settings: CaptionSettings | None = None) -> list[dict[str, Any]]:
    """Caption one chunk of instance rows: a record each with the VLM's schema fields (``status`` ok), or why
    not (``no_identity``, ``image_error``, ``schema_error``). Nothing is written: assembly, QC and the files
    need every chunk of the run (:func:`caption_run`)."""
    settings = settings or CaptionSettings.from_config(cfg, style)
    records, live, images = [], [], []
    for row in rows:
        record = new_record(row, settings, models.captioner.model_version)
        records.append(record)
        if record["status"] == "no_identity":
            continue
        try:
            images.append(load_crop(row.get("crop_path"), settings.background, settings.max_side))
            live.append(record)
        except InputError as exc:
            record.update(status="image_error", error=str(exc))
    generate_fields(models.captioner, images, live, settings, cfg)
    return records


def run(run_dir: Path, cfg: Config, models: CaptionModels | None = None, style: str | None = None,
        force: bool = False, sequences: bool = False) -> dict[str, Any]:
    """:func:`caption_run` on the run's manifest, then save it (outside a flow; a flow saves it itself)."""
    manifest = Manifest.for_run(run_dir)
    models = models or load_models(cfg)
    summary = caption_run(run_dir, manifest, cfg, models.captioner, models.embedder, style, force, sequences)
    manifest.save()
    return summary


def caption_run(run_dir: Path, manifest: Manifest, cfg: Config, captioner: Any = None, embedder: Any = None,
                style: str | None = None, force: bool = False, sequences: bool = False) -> dict[str, Any]:
    """Caption every kept instance of the run (see module doc); returns the summary. The manifest is updated
    in memory, not saved (the caller saves it: :func:`run`, or the flow).

    Run again, it generates only what is new: an instance captioned before with the same identity, style and
    model keeps its fields (and its review); identity traits, QC flags, cluster labels and the report are
    computed again over all. ``force`` generates every caption again.

    Three steps, which a flow runs as tasks (the middle one fanned out to workers, a chunk per task):
    :func:`plan_captions`, :func:`process` on each of :func:`caption_chunks`, :func:`finish_captions`."""
    rows = caption_inputs(run_dir, manifest)
    models = load_models(cfg, captioner, embedder)
    plan = plan_captions(run_dir, rows, cfg, models.captioner.model_version, style=style, force=force)
    chunks = caption_chunks(plan, int(cfg.captions.chunk_size))
    parts = []
    with tqdm(total=len(plan["todo"]), desc="captions", unit="instance") as bar:
        for chunk in chunks:
            parts.append(process(chunk, cfg, models, style=plan["style"]))
            bar.update(len(chunk))
    return finish_captions(run_dir, manifest, cfg, models, plan, parts, sequences=sequences)


CHUNK_KEYS = ("row_id", "identity", "identity_state", "view", "crop_path")  # what :func:`process` reads of a row


def caption_inputs(run_dir: Path, manifest: Manifest) -> list[dict[str, Any]]:
    """The run's kept instances (manifest order), each with the fields captioning reads (:data:`CHUNK_KEYS`);
    :class:`InputError` when there is none, or none with a reviewed identity (before any model is loaded)."""
    rows = [{k: row.get(k) for k in CHUNK_KEYS} for row in manifest.rows(kind="instance", status="kept")]
    if not rows:
        raise InputError(Path(run_dir) / "manifest.parquet", "has no kept instances to caption (run curate first)")
    if not any(identified(r) for r in rows):
        raise InputError(Path(run_dir) / "manifest.parquet", "has no instance with a reviewed identity (run "
                         "identify, review identities in Label Studio, then review-sync)")
    return rows


def plan_captions(run_dir: Path, rows: list[dict[str, Any]], cfg: Config, model_version: str,
                  style: str | None = None, force: bool = False) -> dict[str, Any]:
    """What a caption run generates (plain data, small enough to go to workers): ``rows`` (every kept instance,
    :func:`caption_inputs`), ``records`` (row id → the records settled now: ``no_identity``, and earlier
    captions reused unless ``force``), ``todo`` (row ids to caption, in order), ``reused`` and ``style``."""
    settings = CaptionSettings.from_config(cfg, style)
    out = Path(run_dir) / CAPTIONS_DIR
    previous = {r["row_id"]: r for r in read_records(run_dir)} if (out / RECORDS_NAME).is_file() else {}
    done: dict[str, dict[str, Any]] = {}
    todo, reused = [], 0
    for row in rows:
        record = new_record(row, settings, model_version)
        if record["status"] == "no_identity":
            done[record["row_id"]] = record
        elif not force and _reusable(previous.get(record["row_id"]), record):
            record.update({k: previous[record["row_id"]].get(k) for k in REUSED_KEYS})
            done[record["row_id"]] = record
            reused += 1
        else:
            todo.append(record["row_id"])
    return {"rows": rows, "records": done, "todo": todo, "reused": reused, "style": settings.style}


def caption_chunks(plan: dict[str, Any], size: int) -> list[list[dict[str, Any]]]:
    """The plan's rows to caption, `size` at a time (``captions.chunk_size``: a worker task's unit)."""
    todo = set(plan["todo"])
    return [list(c) for c in chunked([r for r in plan["rows"] if str(r["row_id"]) in todo], size)]


def finish_captions(run_dir: Path, manifest: Manifest, cfg: Config, models: CaptionModels, plan: dict[str, Any],
                    parts: Sequence[Sequence[dict[str, Any]]], sequences: bool = False) -> dict[str, Any]:
    """What needs every record of the run: the plan's records with the generated `parts` (:func:`process` of
    each chunk) → identity majorities, assembly + QC, cluster labels, the files, the manifest (in memory) and,
    on request, the sequence summaries. Returns the summary."""
    from castlab.captions.report import REPORT_MD, write_caption_report

    run_dir = Path(run_dir).resolve()
    out = run_dir / CAPTIONS_DIR
    settings = CaptionSettings.from_config(cfg, plan["style"])
    captioner, embedder = models.captioner, models.embedder
    done = {**plan["records"], **{r["row_id"]: r for part in parts for r in part}}
    missing = [str(r["row_id"]) for r in plan["rows"] if str(r["row_id"]) not in done]
    if missing:
        raise ValueError(f"captions: no record for {len(missing)} instance(s), e.g. {missing[0]!r} "
                         "(a chunk's result is missing)")
    records = [done[str(r["row_id"])] for r in plan["rows"]]
    crop_paths = {str(r["row_id"]): r.get("crop_path") for r in plan["rows"]}

    def crop(row_id: str) -> Image.Image:
        return load_crop(crop_paths[row_id], settings.background, settings.max_side)

    # fields first (the chunks), then assembly + QC, which need every caption of an identity (its usual traits)
    ok = [r for r in records if r["status"] == "ok"]
    usual_paths = [*cfg.captions.invariant_fields, "outfit"]
    usual = identity_majorities([r["fields"] for r in ok], usual_paths, cfg=cfg)
    known = sorted({str(r["identity"]) for r in records if r["identity"]})
    for chunk in tqdm(list(chunked(ok, settings.chunk_size)), desc="caption QC", unit="chunk", leave=False):
        finish_records(chunk, [crop(r["row_id"]) for r in chunk], cfg, settings, usual, known, embedder)
    by_identity: dict[str, list[dict[str, Any]]] = {}
    for record in ok:
        by_identity.setdefault(record["identity"], []).append(record)
    labels = cluster_labels(captioner, by_identity, usual, settings, int(cfg.seed), crop)
    out.mkdir(parents=True, exist_ok=True)
    for record in records:
        record["priority"] = review_priority(record["flags"]) if record["status"] == "ok" else 0
    write_records(out, records)
    write_json_atomic(out / LABELS_NAME, {"profile": cfg.profile, "model_version": captioner.model_version,
                                          "identities": labels})
    for record in records:
        manifest.update(record["row_id"], caption_pred=record["caption"], caption_status=record["status"],
                        caption_error=record["error"], caption_flags=", ".join(record["flags"]),
                        caption_priority=record["priority"], caption_tokens=record["tokens"],
                        caption_clip_score=record["clip_score"])
    trigger = [str(cfg.dataset.trigger_token), str(cfg.dataset.class_word)]
    report = write_caption_report(out, records, cfg.profile, int(cfg.dataset.caption_min_tokens),
                                  int(cfg.dataset.caption_max_tokens), trigger)
    summary: dict[str, Any] = {
        "instances": len(records), "status": dict(Counter(r["status"] for r in records)),
        "captioned_now": len(plan["todo"]), "reused": plan["reused"], "chunks": len(parts),
        "flagged": sum(1 for r in records if r["flags"]), "identities": len(labels), "style": settings.style,
        "model_version": captioner.model_version, "profile": cfg.profile, "records": str(out / RECORDS_NAME),
        "report": report["files"][REPORT_MD],
    }
    if sequences:
        summary["sequences"] = summarise_sequences(run_dir, manifest, captioner, settings)
    write_json_atomic(out / "caption_summary.json", summary)
    return summary


REUSED_KEYS = ("fields", "field_flags", "confidence", "reviewed_caption", "edited", "reviewed_tokens")


def _reusable(previous: dict[str, Any] | None, record: dict[str, Any]) -> bool:
    """An earlier caption of the same instance, identity, style and model: its fields need no new generation."""
    return bool(previous) and previous.get("status") == "ok" and bool(previous.get("fields")) and all(
        previous.get(k) == record[k] for k in ("identity", "style", "model_version"))


def write_records(out: Path, records: Sequence[dict[str, Any]]) -> Path:
    return write_text_atomic(out / RECORDS_NAME, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / CAPTIONS_DIR / RECORDS_NAME
    if not path.is_file():
        raise InputError(path, "is missing: run `castlab caption` first")
    return read_jsonl(path)


def read_labels(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CAPTIONS_DIR / LABELS_NAME
    return json.loads(path.read_text(encoding="utf-8")).get("identities", {}) if path.is_file() else {}


def summarise_sequences(run_dir: Path, manifest: Manifest, captioner: Any, settings: CaptionSettings) -> dict:
    """One motion description per shot holding identified instances, from ``sequence_frames`` frames spread
    evenly over the shot (written to ``captions/sequences.json``)."""
    from castlab.segment.propagate import decode_frames, shot_range

    shots = sorted({(str(r["video_id"]), str(r["shot_id"])) for r in manifest.rows(kind="instance", status="kept")
                    if identified(r) and row_text(r.get("shot_id"))})
    entries: dict[str, Any] = {}
    items, keys = [], []
    for video_id, shot_id in tqdm(shots, desc="sequences", unit="shot", leave=False):
        key = f"{video_id}/{shot_id}"
        try:
            video, shot = shot_range(run_dir, video_id, shot_id)
            count = int(shot["frames"])
            n = min(settings.sequence_frames, count)
            picks = sorted({round(i * (count - 1) / max(1, n - 1)) for i in range(n)})
            frames = decode_frames(video, float(shot["start_time"]), int(shot["start_frame"]), count,
                                   shot["orientation"], keep=set(picks))
        except InputError as exc:
            entries[key] = {"status": "video_error", "error": str(exc)}
            continue
        side = 448
        items.append([fit_within(Image.fromarray(f), side) for f in frames])
        keys.append(key)
        entries[key] = {"frames": [int(shot["start_frame"]) + p for p in picks]}
    texts = captioner.generate(items, SEQUENCE_PROMPT, SequenceSummary, settings.max_new_tokens,
                               batch_size=1) if items else []
    for key, text in zip(keys, texts, strict=True):
        try:
            entries[key].update(parse_fields(text, SequenceSummary), status="ok")
        except SchemaError as exc:
            entries[key].update(status="schema_error", error=str(exc))
    write_json_atomic(Path(run_dir) / CAPTIONS_DIR / SEQUENCES_NAME, {"shots": entries})
    return {"shots": len(entries), "ok": sum(1 for e in entries.values() if e.get("status") == "ok")}


"""The identity stage split for workers: embed chunks anywhere, in any order, then cluster them in one step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_identity import _run

from castlab.config import load_config
from castlab.errors import InputError
from castlab.identity.stage import (
    build_identities,
    cluster_identities,
    embed_chunk,
    frames_of,
    identity_inputs,
    load_models,
)
from castlab.rows import chunked


def _plain_rows(manifest) -> str:
    rows = {r["row_id"]: {k: v for k, v in r.items() if not k.endswith("path")} for r in manifest.rows()}
    return json.dumps(rows, sort_keys=True, default=str)


def test_chunks_embedded_out_of_order_cluster_as_one_pass(tmp_path: Path):
    cfg = load_config(profile="tiny", extra={"identity": {"chunk_instances": 10}})
    one_run, one_manifest = _run(tmp_path / "one")
    one = build_identities(one_run, one_manifest, cfg)

    run, manifest = _run(tmp_path / "chunked")
    instances, frames = identity_inputs(run, manifest, cfg)
    models = load_models(cfg)
    chunks = list(chunked(instances, 10))
    assert len(chunks) == 5
    done = {i: embed_chunk(c, cfg, models, run_dir=run, frames=frames_of(c, frames), index=i)
            for i, c in reversed(list(enumerate(chunks)))}  # workers finish in any order
    assert all(Path(d["vectors"]).is_file() for d in done.values())
    assert all("face_vector" not in u for d in done.values() for u in d["updates"])  # results stay small
    summary = cluster_identities(run, manifest, cfg, [done[i] for i in range(len(chunks))])

    strip = ("report", "sheets")
    assert {k: v for k, v in summary.items() if k not in strip} == {k: v for k, v in one.items() if k not in strip}
    assert _plain_rows(manifest) == _plain_rows(one_manifest)
    with np.load(run / "embeddings" / "identity.npz") as a, np.load(one_run / "embeddings" / "identity.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in ("row_ids", "face_mask", "clip_mask"))
        assert np.array_equal(a["face"], b["face"], equal_nan=True)
        assert np.array_equal(a["clip"], b["clip"], equal_nan=True)
    assert not (run / "embeddings" / "chunks").exists()


def test_frames_of_gives_a_chunk_only_its_frames():
    frames = {"frame:a": {"path": "a"}, "frame:b": {"path": "b"}}
    assert frames_of([{"parent_id": "frame:b"}, {"parent_id": "frame:x"}], frames) == {"frame:b": {"path": "b"}}


def test_a_chunk_that_does_not_match_its_vectors_fails(tmp_path: Path):
    cfg = load_config(profile="tiny")
    run, manifest = _run(tmp_path, per=2)
    instances, frames = identity_inputs(run, manifest, cfg)
    done = embed_chunk(instances, cfg, load_models(cfg), run_dir=run, frames=frames, index=0)
    done["updates"] = done["updates"][1:]
    with pytest.raises(InputError, match="does not match its rows"):
        cluster_identities(run, manifest, cfg, [done])

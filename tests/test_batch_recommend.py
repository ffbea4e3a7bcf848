"""Batch recommendation from a sessions file: equal to the single-session API per session,
unknown ids counted, Parquet and CSV outputs, and clear errors on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from run_folders import generated_dataset, random_run

from negrec_fast.batch_recommend import recommend_file
from negrec_fast.checkpoint import load_checkpoint, save_checkpoint
from negrec_fast.cli import main
from negrec_fast.data import load_dataset
from negrec_fast.errors import InputError, NegrecError
from negrec_fast.recommend import Recommender

MAX_LEN = 8


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return generated_dataset(tmp_path_factory.mktemp("batchrec"), n_sessions=150, n_items=120, seed=5)


@pytest.fixture(scope="module", params=["sasrec", "gru4rec", "sasrec+kept"])
def run(request, dataset_dir, tmp_path_factory) -> Path:
    """A random run; "sasrec+kept" reads the kept plays only (its query needs the skip flags)."""
    model = request.param.split("+")[0]
    return random_run(dataset_dir, tmp_path_factory.mktemp("runs") / request.param, model=model, max_len=MAX_LEN,
                      read_skipped=request.param != "sasrec+kept")


@pytest.fixture(scope="module")
def sessions(dataset_dir) -> dict[str, list[tuple[str, bool]]]:
    """Sessions of (track, skipped): dataset sessions (many longer than MAX_LEN) with unknown
    tracks mixed in, one session of unknown tracks only, one of a single play."""
    ds = load_dataset(dataset_dir)
    out: dict[str, list[tuple[str, bool]]] = {}
    for s in range(40):
        items, skips = ds.session(s)
        plays = list(zip(ds.decode(items), (skips == 1).tolist()))
        if s % 3 == 0:
            plays.insert(len(plays) // 2, (f"unknown-{s}", s % 2 == 0))
        out[f"s{s:02d}"] = plays
    out["only-unknown"] = [("unknown-x", False), ("unknown-y", True)]
    out["single"] = [(ds.decode([5])[0], False)]
    return out


def n_unknown(plays) -> int:
    return sum(track.startswith("unknown-") for track, _ in plays)


@pytest.fixture(scope="module")
def events_csv(sessions, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "sessions.csv"
    lines = ["session_id,item_id,skipped"]
    lines += [f"{key},{track},{str(skip).lower()}" for key, plays in sessions.items() for track, skip in plays]
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_same_ranking(items, scores, single) -> None:
    """Equal lists up to swaps of items whose scores tie within 1e-5 (batched vs single matmul)."""
    assert len(items) == len(single.items)
    np.testing.assert_allclose(scores, single.scores, atol=1e-5, rtol=0)
    s = np.asarray(single.scores)
    for i, (a, b) in enumerate(zip(items, single.items)):
        if a != b:
            near = np.abs(s - s[i]) < 1e-5
            assert near.sum() > 1 or i == len(items) - 1, f"rank {i + 1}: {a} != {b}"


@pytest.mark.parametrize("k", [10, 200])
@pytest.mark.parametrize("exclude_seen,exclude_skipped", [(False, True), (True, False), (False, False)])
def test_batch_equals_single_session_api(run, events_csv, sessions, tmp_path, k, exclude_seen, exclude_skipped):
    rec = Recommender.load(run)
    out = recommend_file(
        rec, events_csv, tmp_path / "recs.parquet", k=k, exclude_seen=exclude_seen, exclude_skipped=exclude_skipped,
        batch_size=7, progress=False, skip_column="skipped",
    )
    rows = {r["session"]: r for r in pq.read_table(out.output).to_pylist()}
    assert set(rows) == set(sessions)
    for key, plays in sessions.items():
        single = rec.recommend(
            [t for t, _ in plays], skips=[sk for _, sk in plays],
            skipped=[t for t, sk in plays if sk] if exclude_skipped else [], k=k, exclude_seen=exclude_seen,
        )
        assert_same_ranking(rows[key]["items"], rows[key]["scores"], single)
        assert rows[key]["n_unknown"] == n_unknown(plays)
    assert out.n_sessions == len(sessions)
    assert out.n_plays == sum(len(p) for p in sessions.values())
    assert out.n_unknown_plays == sum(n_unknown(p) for p in sessions.values())
    assert sorted(out.unknown_ids) == sorted({t for p in sessions.values() for t, _ in p if t.startswith("unknown-")})
    assert out.n_empty_sessions == 1


def test_csv_output_and_parquet_input_give_the_same_recommendations(run, events_csv, tmp_path):
    rec = Recommender.load(run)
    table = pacsv.read_csv(events_csv)
    pq.write_table(table, tmp_path / "sessions.parquet")
    a = recommend_file(rec, events_csv, tmp_path / "a.parquet", k=4, progress=False, skip_column="skipped")
    b = recommend_file(rec, tmp_path / "sessions.parquet", tmp_path / "b.csv", k=4, progress=False, skip_column="skipped")
    wide = pq.read_table(a.output).to_pylist()
    long = pacsv.read_csv(b.output).to_pylist()
    expected = [(r["session"], i + 1, item) for r in wide for i, item in enumerate(r["items"])]
    assert [(r["session"], r["rank"], r["item"]) for r in long] == expected
    np.testing.assert_allclose([r["score"] for r in long], [s for r in wide for s in r["scores"]], rtol=1e-6)


def test_cli_batch_recommend_reports_unknown_ids(run, events_csv, tmp_path, capsys):
    out = tmp_path / "recs.parquet"
    args = ["recommend", str(run), "--input", str(events_csv), "--output", str(out), "--k", "3", "--skip-column", "skipped"]
    assert main([*args, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"to {out}" in captured.out
    assert "not in the run's vocabulary" in captured.err and "unknown-0" in captured.err
    assert pq.read_table(out).num_rows == len(pacsv.read_csv(events_csv).column("session_id").unique())


def test_malformed_sessions_file_names_the_file(run, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("session_id,item_id,skipped\na,t1,true\na,t2,perhaps\n")
    rec = Recommender.load(run)
    with pytest.raises(InputError, match=r"bad\.csv:3"):
        recommend_file(rec, bad, tmp_path / "r.parquet", progress=False, skip_column="skipped")
    assert not (tmp_path / "r.parquet").exists()
    no_item = tmp_path / "no_item.csv"
    no_item.write_text("session_id,track\na,t1\n")
    assert main(["recommend", str(run), "--input", str(no_item), "--output", str(tmp_path / "r.csv")]) == 2
    assert "no_item.csv" in capsys.readouterr().err
    with pytest.raises(InputError, match="missing.csv: sessions file not found"):
        recommend_file(rec, tmp_path / "missing.csv", tmp_path / "r.parquet", progress=False)
    with pytest.raises(NegrecError, match=r"must end in \.parquet or \.csv"):
        recommend_file(rec, bad, tmp_path / "r.json", progress=False)


def test_run_folder_errors_name_the_file(run, dataset_dir, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(run, newer)
    state = load_checkpoint(newer / "best.pt")
    save_checkpoint(newer / "best.pt", {**state, "format": state["format"] + 1})
    with pytest.raises(InputError, match=r"newer\W+best\.pt: checkpoint format 2 .*newer version"):
        Recommender.load(newer)

    moved = tmp_path / "dataset-copy"
    shutil.copytree(dataset_dir, moved)
    no_vocab = tmp_path / "no-vocab"
    shutil.copytree(run, no_vocab)
    (no_vocab / "dataset.json").write_text(json.dumps({"path": str(moved)}))
    (moved / "vocab.arrow").unlink()
    with pytest.raises(InputError, match=r"vocab\.arrow: the run's vocabulary is missing"):
        Recommender.load(no_vocab)

    (no_vocab / "dataset.json").unlink()
    with pytest.raises(InputError, match=r"dataset\.json: not found"):
        Recommender.load(no_vocab)



def test_per_play_skip_flags(run, sessions):
    rec = Recommender.load(run)
    with pytest.raises(ValueError, match="one flag per play"):
        rec.recommend(["a", "b"], skips=[True])
    if not run.name.endswith("+kept"):
        return
    # reading the kept plays only: a session scores as its kept plays alone (within max_len plays)
    compared = 0
    for plays in sessions.values():
        plays = plays[:MAX_LEN]
        kept = [t for t, sk in plays if not sk]
        if not kept or len(kept) == len(plays):
            continue
        got = rec.recommend([t for t, _ in plays], skips=[sk for _, sk in plays], k=10)
        assert_same_ranking(got.items, got.scores, rec.recommend(kept, k=10))
        compared += 1
    assert compared > 10

"""Export: exported query graph + item table score like the eager model (within 1e-5 on CPU)
for any batch size, and bad requests fail with clear errors."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch
from run_folders import generated_dataset, random_run

from negrec_fast.cli import main
from negrec_fast.data import load_dataset
from negrec_fast.errors import ConfigError
from negrec_fast.export import export
from negrec_fast.recommend import Recommender

MAX_LEN = 8
CASES = [("sasrec", "export"), ("bert4rec", "export"), ("gru4rec", "export"), ("sasrec", "torchscript"),
         ("bert4rec", "onnx"), ("gru4rec", "onnx"),
         # skip-aware inputs: a second graph input, the skip flags
         ("sasrec+skips", "export"), ("gru4rec+skips", "export"), ("bert4rec+skips", "torchscript"),
         ("sasrec+skips", "onnx"), ("gru4rec+skips", "onnx"),
         # an encoder that reads the kept plays only: the flags are an input too
         ("sasrec+kept", "export"), ("sasrec+kept", "onnx")]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return generated_dataset(tmp_path_factory.mktemp("export"), n_sessions=80, n_items=60, seed=2)


@pytest.fixture(scope="module")
def runs(dataset_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for m in ("sasrec", "bert4rec", "gru4rec"):
        runs[m] = random_run(dataset_dir, root / m, model=m, max_len=MAX_LEN, seed=1)
        runs[f"{m}+skips"] = random_run(dataset_dir, root / f"{m}+skips", model=m, max_len=MAX_LEN, seed=1, skip_inputs=True)
    runs["sasrec+kept"] = random_run(dataset_dir, root / "sasrec+kept", max_len=MAX_LEN, seed=1, read_skipped=False)
    return runs


def skip_flags(x: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(x.shape[0] + 7)
    return (torch.rand(x.shape, generator=g) < 0.4) & (x != 0)


def inputs(vocab_size: int, batch: int) -> torch.Tensor:
    """Left-padded rows: full, partly padded, a single play and (from 4 rows) all padding."""
    g = torch.Generator().manual_seed(batch)
    x = torch.randint(2, vocab_size, (batch, MAX_LEN), generator=g)
    for row in range(batch):
        x[row, : [0, 3, MAX_LEN - 1, MAX_LEN][row % 4]] = 0
    return x


def query_fn(out: Path, format: str):
    """``(items, skips or None) -> query`` with the exported graph."""
    if format == "export":
        module = torch.export.load(out / "query.pt2").module()
        return lambda x, s: module(x) if s is None else module(x, s)
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in recent torch
            module = torch.jit.load(str(out / "query.ts"))
        return lambda x, s: module(x) if s is None else module(x, s)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out / "query.onnx"), providers=["CPUExecutionProvider"])
    return lambda x, s: torch.from_numpy(
        session.run(["query"], {"items": x.numpy(), **({} if s is None else {"skips": s.numpy()})})[0]
    )


@pytest.mark.parametrize("model,format", CASES)
def test_exported_scores_match_eager(runs, tmp_path, model, format):
    if format == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
    out = export(runs[model], tmp_path / "out", format=format)
    meta = json.loads((out / "export.json").read_text())
    assert meta["graph"] == {"export": "query.pt2", "torchscript": "query.ts", "onnx": "query.onnx"}[format]
    aware = "+" in model
    assert meta["max_len"] == MAX_LEN and meta["model"] == model.split("+")[0]
    assert (meta["skips_input"] is not None) == aware
    rec = Recommender.load(runs[model])
    with pa.memory_map(str(out / "vocab.arrow")) as f:
        assert ipc.open_file(f).read_all().column("item").to_pylist() == rec.dataset.vocab.to_pylist()
    table = torch.from_numpy(np.load(out / "item_embeddings.npy"))
    query = query_fn(out, format)
    for batch in (1, 5):
        x = inputs(rec.dataset.vocab_size, batch)
        flags = skip_flags(x) if aware else None
        with torch.no_grad():
            eager = rec.model.score_all(rec.model.next_query(x, flags))
            if aware:  # the flags change the scores: the exported input is not ignored
                assert (eager[:, 2:] - rec.model.score_all(rec.model.next_query(x))[:, 2:]).abs().max() > 1e-3
        got = query(x, flags) @ table.T
        assert got.shape == eager.shape
        # ids 0 and 1 are -inf in eager scores and never recommended
        assert torch.isinf(eager[:, :2]).all()
        assert (got[:, 2:] - eager[:, 2:]).abs().max().item() <= 1e-5


def test_export_refuses_a_non_empty_folder_and_a_missing_package(runs, tmp_path, monkeypatch):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ConfigError, match="full: the export folder exists and is not empty"):
        export(runs["sasrec"], tmp_path / "full")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ConfigError, match=r"export format 'onnx' needs onnx.*pip install 'negrec-fast\[export\]'"):
        export(runs["sasrec"], tmp_path / "onnx-out", format="onnx")
    assert not (tmp_path / "onnx-out").exists()


def test_cli_export(runs, tmp_path, capsys):
    assert main(["export", str(runs["gru4rec"]), str(tmp_path / "out"), "--format", "export"]) == 0
    assert (tmp_path / "out" / "query.pt2").is_file()
    assert main(["export", str(runs["gru4rec"]), str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_exported_vocabulary_decodes_recommendations(runs, dataset_dir, tmp_path):
    """Scoring with the exported files alone gives Recommender.recommend's top items."""
    out = export(runs["sasrec"], tmp_path / "out")
    with pa.memory_map(str(out / "vocab.arrow")) as f:
        vocab = ipc.open_file(f).read_all().column("item").to_pylist()
    ds = load_dataset(dataset_dir)
    session = ds.decode(ds.items[ds.offsets[3]: ds.offsets[4]])
    index = {key: i for i, key in enumerate(vocab) if i >= 2}
    ids = [index[t] for t in session][-MAX_LEN:]
    x = torch.zeros(1, MAX_LEN, dtype=torch.int64)
    x[0, MAX_LEN - len(ids):] = torch.tensor(ids)
    scores = (torch.export.load(out / "query.pt2").module()(x) @ torch.from_numpy(np.load(out / "item_embeddings.npy")).T)[0]
    scores[:2] = float("-inf")
    top = [vocab[i] for i in scores.topk(5).indices.tolist()]
    assert top == Recommender.load(runs["sasrec"]).recommend(session, k=5).items

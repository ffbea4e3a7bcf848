"""Export a trained run for serving: the encoder and query head as one graph, the item table
and the vocabulary.

``OUT/`` holds ``query.pt2`` (``torch.export``), ``query.onnx`` (its weights may sit beside it
in ``query.onnx.data``: keep the folder together) or ``query.ts`` (TorchScript):
``items`` int64 ``[batch, max_len]`` (dynamic batch), and for a model trained with
``model.skip_inputs`` or ``model.read_skipped = false`` (or a ``bpr`` / ``wrmf`` model, whose
query is built from the kept plays) also ``skips`` bool ``[batch, max_len]`` (True where that input play was skipped) -> ``query``
float32 ``[batch, d]``;
``item_embeddings.npy`` (float32 ``[V, d]``, the tied item table); ``vocab.arrow`` (column
``item``: the original id of each internal id) and ``export.json`` (shapes, ids, scoring).
Inputs are internal ids, LEFT-padded with 0, most recent play last: the last ``max_len`` known
plays of a session. Scores are ``query @ item_embeddings.T``; ids 0 and 1 (``[PAD]``,
``[MASK]``) are never recommended.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import tempfile
import warnings
from os import PathLike
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import torch
from torch import Tensor, nn

from negrec_fast.errors import ConfigError
from negrec_fast.models.base import N_RESERVED
from negrec_fast.models.gru4rec import GRU4Rec

EXPORT_FORMAT = 1
EXPORT_FORMATS = {"export": "query.pt2", "onnx": "query.onnx", "torchscript": "query.ts"}


class QueryGraph(nn.Module):
    """``items [B, max_len] (, skips [B, max_len]) -> query [B, d]``: the model's ``next_query``
    in traceable form (``skips`` only for skip-aware models: see :class:`SkipQueryGraph`).

    GRU4Rec packs variable-length rows in eager mode; here its real plays are moved to the
    front and the GRU runs over the full row, which gives the same state at the last real
    play (the GRU is causal, so trailing padding cannot change it).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, items: Tensor) -> Tensor:
        return self.query(items, None)

    def query(self, items: Tensor, skips: Tensor | None) -> Tensor:
        if isinstance(self.model, GRU4Rec):
            return self._gru_query(items, skips)
        return self.model.next_query(items, skips)

    def _gru_query(self, items: Tensor, skips: Tensor | None) -> Tensor:
        m = self.model
        real = items != m.pad_index
        n_real = real.sum(dim=1, keepdim=True)
        front = torch.where(real, real.cumsum(dim=1) - 1, n_real + (~real).cumsum(dim=1) - 1)
        compact = torch.zeros_like(items).scatter(1, front, items)
        flags = None if skips is None else torch.zeros_like(skips).scatter(1, front, skips)
        out, _ = m.gru(m.input_embedding(compact, flags))
        last = (n_real - 1).clamp(min=0)
        hidden = out.gather(1, last[..., None].expand(-1, -1, m.d_model))[:, 0]
        return m.project(hidden * (n_real > 0))


class SkipQueryGraph(QueryGraph):
    """The query graph of a skip-aware model: ``items`` and ``skips`` in."""

    def forward(self, items: Tensor, skips: Tensor) -> Tensor:
        return self.query(items, skips)


def _example(max_len: int, vocab_size: int) -> Tensor:
    """A batch of 3 rows of different padding (one all padding) to trace with."""
    x = torch.arange(3 * max_len).reshape(3, max_len) % (vocab_size - N_RESERVED) + N_RESERVED
    x[1, : max_len // 2] = 0
    x[2] = 0
    return x


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)


def _save_graph(graph: QueryGraph, example: Tensor, format: str, path: Path) -> None:
    """Writes the graph; torch's own deprecation and tracer warnings are silenced (parity is
    tested in tests/test_export.py), and so is the ONNX exporter's progress on stdout."""
    args: tuple[Tensor, ...] = (example,)
    names = ["items"]
    if isinstance(graph, SkipQueryGraph):
        args, names = (example, example % 3 == 0), ["items", "skips"]
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if format == "export":
            program = torch.export.export(graph, args, dynamic_shapes={n: {0: batch} for n in names})
            torch.export.save(program, path)
        elif format == "torchscript":
            torch.jit.save(torch.jit.trace(graph, args), str(path))
        else:
            if _torch_version() >= (2, 9):  # the torch.export-based exporter is the default
                dynamic = {"dynamo": True, "dynamic_shapes": {n: {0: batch} for n in names}}
            else:
                dynamic = {"dynamic_axes": {**{n: {0: "batch"} for n in names}, "query": {0: "batch"}}}
            torch.onnx.export(graph, args, str(path), input_names=names, output_names=["query"], **dynamic)


def _check_installed(format: str) -> None:
    """The ONNX exporter needs ``onnx`` (and, from torch 2.9, ``onnxscript``): say so up front."""
    if format != "onnx":
        return
    needed = ("onnx", "onnxscript") if _torch_version() >= (2, 9) else ("onnx",)
    missing = [name for name in needed if _missing(name)]
    if missing:
        raise ConfigError(
            f"export format 'onnx' needs {' and '.join(missing)}, not installed here "
            "(pip install 'negrec-fast[export]', or choose --format export)"
        )


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ValueError:  # a module set to None in sys.modules
        return True


def export(
    run_dir: str | PathLike[str], output: str | PathLike[str], *, format: str = "export", checkpoint: str = "best"
) -> Path:
    """Export ``RUN_DIR/{checkpoint}.pt`` to the folder ``output`` (see the module docstring);
    written to a temporary sibling, renamed into place when complete."""
    from negrec_fast.recommend import Recommender

    if format not in EXPORT_FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: the export folder exists and is not empty")
    rec = Recommender.load(run_dir, checkpoint=checkpoint, device="cpu")
    if rec.config.model.name in ("sine", "pnfrec"):  # their graphs would need the skip flags to split the plays
        raise ConfigError(
            f"{run_dir}: export is not supported for model {rec.config.model.name!r}; use recommend or the run folder"
        )
    if rec.config.model.name == "wrmf" and format == "onnx":
        raise ConfigError(
            f"{run_dir}: model 'wrmf' cannot be exported to ONNX (its fold-in needs a Cholesky factorisation, "
            "which ONNX lacks); use --format export or torchscript"
        )
    _check_installed(format)
    model, max_len = rec.model, rec.config.data.max_len
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with torch.no_grad():
            example = _example(max_len, rec.dataset.vocab_size)
            graph = SkipQueryGraph(model) if _reads_skips(rec.config) else QueryGraph(model)
            _save_graph(graph.eval(), example, format, tmp / EXPORT_FORMATS[format])
        np.save(tmp / "item_embeddings.npy", model.item_weight.detach().float().cpu().numpy())
        vocab = pa.RecordBatch.from_pydict({"item": rec.dataset.vocab})
        with pa.OSFile(str(tmp / "vocab.arrow"), "wb") as sink, ipc.new_file(sink, vocab.schema) as writer:
            writer.write_batch(vocab)
        _write_meta(tmp, rec, run_dir, format, checkpoint)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _reads_skips(config) -> bool:
    """Whether the query reads the skip flags: skip-aware inputs, an encoder that reads the kept plays
    only, or a matrix-factorisation model."""
    return config.model.skip_inputs or not config.model.read_skipped or config.model.name in ("bpr", "wrmf")


def _write_meta(folder: Path, rec, run_dir: str | PathLike[str], format: str, checkpoint: str) -> None:
    from negrec_fast import __version__

    model, max_len = rec.model, rec.config.data.max_len
    meta = {
        "export_format": EXPORT_FORMAT,
        "graph": EXPORT_FORMATS[format],
        "format": format,
        "model": rec.config.model.name,
        "max_len": max_len,
        "d_model": model.d_model,
        "vocab_size": rec.dataset.vocab_size,
        "input": {"name": "items", "dtype": "int64", "shape": ["batch", max_len],
                  "padding": "left, id 0; the last max_len known plays, most recent last"},
        "skips_input": {"name": "skips", "dtype": "bool", "shape": ["batch", max_len],
                        "meaning": "True where the input play was skipped, aligned with items"}
        if _reads_skips(rec.config) else None,
        "output": {"name": "query", "dtype": "float32", "shape": ["batch", model.d_model]},
        "scores": "query @ item_embeddings.npy.T; ids 0 ([PAD]) and 1 ([MASK]) are never recommended",
        "vocab": "vocab.arrow",
        "item_embeddings": "item_embeddings.npy",
        "run_dir": str(Path(run_dir).resolve()),
        "checkpoint": checkpoint,
        "negrec_fast": __version__,
        "torch": torch.__version__,
    }
    (folder / "export.json").write_text(json.dumps(meta, indent=2) + "\n")

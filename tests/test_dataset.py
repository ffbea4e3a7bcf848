"""Round trip prepare -> load_dataset: file layout, zero-copy memory-mapped views, checksums."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from negrec_fast.data import SessionDataset, load_dataset, prepare
from negrec_fast.errors import InputError


@pytest.fixture()
def folder(mssd_sample, tmp_path):
    prepare(mssd_sample, tmp_path / "ds", format="mssd", min_length=1, max_length=None, require_skip=False, progress=False)
    return tmp_path / "ds"


def test_folder_layout_and_schema(folder):
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "sessions.arrow", "vocab.arrow"]
    sessions = ipc.open_file(pa.memory_map(str(folder / "sessions.arrow"))).read_all()
    assert sessions.schema == pa.schema(
        [
            ("session", pa.large_string()),
            ("items", pa.list_(pa.uint32())),
            ("skips", pa.list_(pa.uint8())),
            ("train_end", pa.int32()),
            ("valid_target", pa.int32()),
            ("test_target", pa.int32()),
        ]
    )
    vocab = ipc.open_file(pa.memory_map(str(folder / "vocab.arrow"))).read_all()
    assert vocab.schema == pa.schema([("item", pa.large_string()), ("count", pa.uint64())])
    assert vocab.column("item")[:2].to_pylist() == ["[PAD]", "[MASK]"]
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ("n_rows", "n_sessions", "n_items", "vocab_size", "skip_rate", "n_bad_rows", "format_version", "source", "rules", "split", "checksum", "created_by"):
        assert key in manifest
    assert manifest["n_rows"] == sessions.column("items").combine_chunks().values.__len__() == 201


def test_load_is_zero_copy(folder):
    before = pa.total_allocated_bytes()
    ds = load_dataset(folder)
    assert pa.total_allocated_bytes() == before  # nothing copied into Arrow memory: views of the map
    for name in ("items", "skips", "train_end", "valid_target", "test_target", "item_counts"):
        array = getattr(ds, name)
        assert not array.flags.writeable and not array.flags.owndata, name
    assert (ds.items.dtype, ds.skips.dtype, ds.offsets.dtype, ds.train_end.dtype, ds.item_counts.dtype) == (
        np.uint32, np.uint8, np.int64, np.int32, np.uint64)
    assert isinstance(ds, SessionDataset) and len(ds) == ds.n_sessions == 11
    assert ds.vocab_size == ds.n_items + 2 == len(ds.item_counts)
    assert int(ds.item_counts.sum()) == len(ds.items) and ds.items.min() >= 2
    items, skips = ds.session(3)
    assert np.shares_memory(items, ds.items)


def test_encode_decode_round_trip(folder):
    ds = load_dataset(folder)
    originals = ds.decode(ds.items[:10])
    ids, unknown = ds.encode([*originals, "t_missing"])
    assert ids.tolist() == ds.items[:10].tolist() and unknown == ["t_missing"]
    with pytest.raises(ValueError, match="item ids must be in"):
        ds.decode([ds.vocab_size])


def test_checksum_verified_on_request(folder):
    load_dataset(folder, verify=True)
    data = (folder / "vocab.arrow").read_bytes()
    first = load_dataset(folder).decode([2])[0].encode()
    (folder / "vocab.arrow").write_bytes(data.replace(first, first[:-1] + b"#", 1))
    assert load_dataset(folder).decode([2])[0].endswith("#")  # not checked by default
    with pytest.raises(InputError, match="vocab.arrow: checksum mismatch"):
        load_dataset(folder, verify=True)


def test_not_a_dataset(folder, tmp_path):
    with pytest.raises(InputError, match="manifest.json: not found"):
        load_dataset(tmp_path)
    (folder / "sessions.arrow").write_bytes(b"garbage")
    with pytest.raises(InputError, match="sessions.arrow: not a readable Arrow IPC file"):
        load_dataset(folder)

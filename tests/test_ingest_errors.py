"""Bad input: errors name file, line and column; `on_bad_rows="skip"` counts; no partial output."""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import pytest

from negrec_fast.data import load_dataset, prepare
from negrec_fast.data.cli import add_prepare_parser
from negrec_fast.errors import InputError

KEEP_ALL = dict(format="mssd", min_length=1, max_length=None, require_skip=False, progress=False)


def broken_copy(sample: Path, tmp_path: Path, line: int, edit) -> Path:
    lines = sample.read_bytes().split(b"\n")
    lines[line - 1] = edit(lines[line - 1])
    path = tmp_path / "log.csv"
    path.write_bytes(b"\n".join(lines))
    return path


def set_field(index: int, value: bytes):
    def edit(row: bytes) -> bytes:
        fields = row.split(b",")
        fields[index - 1] = value
        return b",".join(fields)

    return edit


def assert_no_output(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


@pytest.mark.parametrize(
    ("line", "edit", "message"),
    [
        (17, set_field(6, b"maybe"), "17:6: expected a boolean (True/False/true/false), found 'maybe'"),
        (5, lambda row: row.rsplit(b",", 1)[0], "5:21: expected 21 fields separated by commas, found 20"),
        (9, set_field(2, b"2.5"), "9:2: expected an integer session_position, found '2.5'"),
        (30, set_field(4, b"t_\xff\xfe"), "30:4: invalid UTF-8 in a key field"),
    ],
)
def test_malformed_rows(mssd_sample, tmp_path, line, edit, message):
    path = broken_copy(mssd_sample, tmp_path, line, edit)
    with pytest.raises(InputError) as err:
        prepare(path, tmp_path / "out", **KEEP_ALL)
    assert str(err.value) == f"{path}:{message}"
    assert_no_output(tmp_path)
    ds = prepare(path, tmp_path / "out", on_bad_rows="skip", **KEEP_ALL)
    assert (ds.manifest["n_bad_rows"], ds.manifest["n_rows"], ds.manifest["source"]["rows_read"]) == (1, 200, 201)


def test_error_line_in_a_gzip_and_in_a_later_shard(mssd_sample, tmp_path):
    path = broken_copy(mssd_sample, tmp_path, 150, set_field(5, b"yes"))
    gz = tmp_path / "log.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(InputError, match=rf"^{gz}:150:5: expected a boolean"):
        prepare(gz, tmp_path / "out", skip_rule="skip_1", **{k: v for k, v in KEEP_ALL.items() if k != "skip_rule"})
    shards = tmp_path / "shards"
    shards.mkdir()
    lines = path.read_text().splitlines(keepends=True)
    (shards / "a.csv").write_text("".join(lines[:100]))
    (shards / "b.csv").write_text(lines[0] + "".join(lines[100:]))
    with pytest.raises(InputError, match=rf"^{shards / 'b.csv'}:51:5: expected a boolean"):
        prepare(shards, tmp_path / "out", skip_rule="skip_1", **{k: v for k, v in KEEP_ALL.items() if k != "skip_rule"})


def test_truncated_gzip(mssd_sample, tmp_path):
    data = gzip.compress(mssd_sample.read_bytes())
    gz = tmp_path / "cut.csv.gz"
    gz.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=rf"^{gz}:\d+:\d+: truncated or corrupt gzip data"):
        prepare(gz, tmp_path / "out", **KEEP_ALL)
    assert_no_output(tmp_path)


def test_missing_column_and_empty_files(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("session_id,session_position,track_id_clean\ns,1,t\n")
    with pytest.raises(InputError, match=rf"^{path}:1: missing column 'skip_2' in the header"):
        prepare(path, tmp_path / "out", **KEEP_ALL)
    path.write_text("")
    with pytest.raises(InputError, match=rf"^{path}: empty file"):
        prepare(path, tmp_path / "out", **KEEP_ALL)
    path.write_text(
        "session_id,session_position,session_length,track_id_clean,skip_1,skip_2,skip_3,not_skipped\n"
    )
    with pytest.raises(InputError, match=rf"^{path}: no data rows"):
        prepare(path, tmp_path / "out", **KEEP_ALL)
    assert_no_output(tmp_path)


def test_lfm_bad_timestamp(lfm1k_sample, tmp_path):
    lines = lfm1k_sample.read_bytes().split(b"\n")
    lines[41] = lines[41].replace(b"T", b" at ", 1)
    path = tmp_path / "lfm.tsv"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(InputError, match=rf"^{path}:42:2: expected a timestamp \(unix seconds or ISO-8601"):
        prepare(path, tmp_path / "out", format="lfm1k", progress=False)


OUT_OF_RANGE = "expected a timestamp within ±9007199254740991 unix seconds (|t| < 2^53"


@pytest.mark.parametrize(
    ("format", "name", "text", "options", "message"),
    [
        # A first line with an out-of-range time is a bad data row, not a header.
        ("lfm2b", "log.tsv", "u1\tt2\t99999999999999999999\n", {}, f"1:3: {OUT_OF_RANGE}), found '99999999999999999999'"),
        ("lfm2b", "log.tsv", "u1\tt1\t100\nu1\tt2\t1e300\n", {}, f"2:3: {OUT_OF_RANGE}), found '1e300'"),
        (
            "events",
            "log.csv",
            "user_id,item_id,timestamp\nu,a,100\nu,b,-9223372036854775808\n",
            {},
            f"3:3: {OUT_OF_RANGE}), found '-9223372036854775808'",
        ),
        (
            "recbole",
            "log.inter",
            "user_id:token\titem_id:token\ttimestamp:float\nu\ta\t9007199254740992000\n",
            {"timestamp_unit": "ms"},
            f"2:3: {OUT_OF_RANGE} s; read as milliseconds), found '9007199254740992000'",
        ),
    ],
)
def test_out_of_range_timestamps(tmp_path, format, name, text, options, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as err:
        prepare(path, tmp_path / "out", format=format, min_length=1, progress=False, **options)
    assert str(err.value) == f"{path}:{message}"
    assert_no_output(tmp_path)


def test_extreme_timestamps_in_range_are_far_apart(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("u1\tt1\t9007199254740991\nu1\tt2\t-9007199254740991\nu1\tt3\t100\n")
    ds = prepare(path, tmp_path / "out", format="lfm2b", min_length=1, progress=False)
    assert [ds.session_keys[s].as_py() for s in range(ds.n_sessions)] == ["u1#0", "u1#1", "u1#2"]
    assert ds.timestamps.tolist() == [-9007199254740991, 100, 9007199254740991]


def test_existing_output_is_kept_unless_overwrite(mssd_sample, tmp_path):
    out = tmp_path / "out"
    prepare(mssd_sample, out, **KEEP_ALL)
    with pytest.raises(FileExistsError):
        prepare(mssd_sample, out, **KEEP_ALL)
    ds = prepare(mssd_sample, out, overwrite=True, **{**KEEP_ALL, "max_sessions": 3})
    assert ds.n_sessions == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="negrec-fast")
    add_prepare_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_summary_and_errors(mssd_sample, tmp_path, capsys):
    path = broken_copy(mssd_sample, tmp_path, 17, set_field(6, b"maybe"))
    out = tmp_path / "out"
    argv = ["prepare", "--format", "mssd", str(path), str(out), "--min-length", "1", "--max-length", "0", "--no-require-skip", "--no-progress"]
    assert run_cli(argv) == 1
    assert f"error: {path}:17:6: expected a boolean" in capsys.readouterr().err
    assert run_cli([*argv, "--on-bad-rows", "skip"]) == 0
    rows = [line.split(",") for line in mssd_sample.read_text().splitlines()[1:]]
    del rows[15]  # line 17 of the file
    items, rate = len({r[3] for r in rows}), sum(r[5] == "True" for r in rows) / len(rows)
    assert capsys.readouterr().out.strip() == f"{out}: 200 rows, 11 sessions, {items} items, skip rate {rate:.1%}, 1 bad rows"


def test_cli_min_remainder(mssd_sample, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["prepare", "--format", "mssd", str(mssd_sample), str(out), "--max-length", "7", "--min-remainder", "3", "--no-progress"]
    assert run_cli(argv) == 0
    rules = load_dataset(out).manifest["rules"]
    assert (rules["min_length"], rules["max_length"], rules["min_remainder"]) == (6, 7, 3)
    assert run_cli([*argv[:-3], "--min-remainder", "0", "--overwrite", "--no-progress"]) == 1
    assert capsys.readouterr().err.strip().endswith("error: min_remainder must be >= 1, got 0")

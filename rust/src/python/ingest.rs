//! Bindings of the ingest engine: `ingest(...)` returns numpy arrays (Rust-owned, zero-copy)
//! that `negrec_fast.data` writes as Arrow files; `IngestProgress` is a byte counter a Python
//! thread can poll while the GIL is released.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use numpy::IntoPyArray;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::{to_py_err, BoundedMemory};
use crate::ingest::{
    self as core, EventsSpec, Format, Options, Rules, Signal, SkipRule, SplitRule, Streamed, Streaming,
};

/// Input bytes processed so far by a running `ingest` call.
#[pyclass(frozen, module = "negrec_fast._core")]
struct IngestProgress {
    done: Arc<AtomicU64>,
}

#[pymethods]
impl IngestProgress {
    #[new]
    fn new() -> Self {
        IngestProgress { done: Arc::new(AtomicU64::new(0)) }
    }

    #[getter]
    fn bytes(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}

/// The negative-signal options of an event table, at most one kind.
fn signal(
    skip_column: Option<String>,
    ratio_column: Option<String>,
    play_time_column: Option<String>,
    duration_column: Option<String>,
    rating_column: Option<String>,
    threshold: Option<f64>,
) -> PyResult<Signal> {
    let given = [&skip_column, &ratio_column, &play_time_column, &rating_column].iter().filter(|c| c.is_some()).count();
    if given > 1 {
        return Err(PyValueError::new_err(
            "give one negative signal: skip_column, ratio_column, play_time_column (+ duration_column) or rating_column",
        ));
    }
    if play_time_column.is_some() != duration_column.is_some() {
        return Err(PyValueError::new_err("play_time_column and duration_column go together"));
    }
    let needs = |name: &str| threshold.ok_or_else(|| PyValueError::new_err(format!("{name} needs a threshold")));
    Ok(match (skip_column, ratio_column, play_time_column, duration_column, rating_column) {
        (Some(c), ..) => Signal::Bool(c),
        (_, Some(column), ..) => Signal::Ratio { column, threshold: needs("ratio_column")? },
        (_, _, Some(play), Some(duration), _) => {
            Signal::PlayTime { play, duration, threshold: needs("play_time_column")? }
        }
        (.., Some(column)) => Signal::Rating { column, threshold: needs("rating_column")? },
        _ => Signal::None,
    })
}

fn delimiter_byte(delimiter: Option<String>) -> PyResult<Option<u8>> {
    match delimiter.as_deref() {
        None => Ok(None),
        Some(d) if d.len() == 1 && d != "\n" && d != "\"" => Ok(Some(d.as_bytes()[0])),
        Some(d) => Err(PyValueError::new_err(format!("delimiter must be one ASCII character, got {d:?}"))),
    }
}

/// Total size in bytes of the input files (folders: their shards).
#[pyfunction]
fn input_bytes(paths: Vec<PathBuf>) -> PyResult<u64> {
    core::input_bytes(&paths).map_err(to_py_err)
}

/// Parses, labels, filters, encodes and splits the inputs; returns a dict of numpy arrays and counts.
/// With `memory_limit` (bytes), runs in bounded memory, spilling to `work_dir`, and returns the
/// row and session columns as files there (see `Streamed`).
#[pyfunction]
#[pyo3(name = "ingest", signature = (
    paths, format, *, skip_rule="skip_2", min_length=6, max_length=Some(20), min_remainder=5, require_skip=false,
    max_sessions=None, seed=0, session_gap=Some(1800), split="leave-last-out", valid_fraction=0.1,
    test_fraction=0.1, durations=None, session=None, user=None, item=None, timestamp=None,
    position=None, timestamp_unit="s", skip_column=None, ratio_column=None, play_time_column=None,
    duration_column=None, rating_column=None, threshold=None, delimiter=None, skip_bad_rows=false,
    progress=None, memory_limit=None, work_dir=None
))]
#[allow(clippy::too_many_arguments)]
fn run_ingest<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    format: &str,
    skip_rule: &str,
    min_length: usize,
    max_length: Option<usize>,
    min_remainder: usize,
    require_skip: bool,
    max_sessions: Option<usize>,
    seed: u64,
    session_gap: Option<i64>,
    split: &str,
    valid_fraction: f64,
    test_fraction: f64,
    durations: Option<PathBuf>,
    session: Option<String>,
    user: Option<String>,
    item: Option<String>,
    timestamp: Option<String>,
    position: Option<String>,
    timestamp_unit: &str,
    skip_column: Option<String>,
    ratio_column: Option<String>,
    play_time_column: Option<String>,
    duration_column: Option<String>,
    rating_column: Option<String>,
    threshold: Option<f64>,
    delimiter: Option<String>,
    skip_bad_rows: bool,
    progress: Option<PyRef<'py, IngestProgress>>,
    memory_limit: Option<u64>,
    work_dir: Option<PathBuf>,
) -> PyResult<Bound<'py, PyDict>> {
    let timestamp_ms = match timestamp_unit {
        "s" => false,
        "ms" => true,
        other => return Err(PyValueError::new_err(format!("timestamp_unit must be 's' or 'ms', got {other:?}"))),
    };
    let spec = || -> PyResult<EventsSpec> {
        Ok(EventsSpec {
            session: session.clone(),
            user: user.clone(),
            item: item.clone(),
            timestamp: timestamp.clone(),
            position: position.clone(),
            timestamp_ms,
            signal: signal(
                skip_column.clone(),
                ratio_column.clone(),
                play_time_column.clone(),
                duration_column.clone(),
                rating_column.clone(),
                threshold,
            )?,
            delimiter: delimiter_byte(delimiter.clone())?,
        })
    };
    let format = match format {
        "mssd" => Format::Mssd(SkipRule::parse(skip_rule).ok_or_else(|| {
            PyValueError::new_err(format!(
                "skip_rule must be one of skip_1, skip_2, skip_3, not_skipped; got {skip_rule:?}"
            ))
        })?),
        "lfm1k" => Format::Lfm1k,
        "lfm2b" => Format::Lfm2b,
        "events" => Format::Events(spec()?),
        "recbole" => Format::Recbole(spec()?),
        other => {
            return Err(PyValueError::new_err(format!(
                "format must be one of mssd, lfm1k, lfm2b, events, recbole; got {other:?}"
            )))
        }
    };
    let split = match split {
        "leave-last-out" => SplitRule::LeaveLastOut,
        "temporal" => SplitRule::Temporal { valid_fraction, test_fraction },
        other => {
            return Err(PyValueError::new_err(format!("split must be 'leave-last-out' or 'temporal', got {other:?}")))
        }
    };
    let options = Options {
        rules: Rules { min_length, max_length, min_remainder, require_skip, max_sessions, seed, session_gap },
        split,
        skip_bad_rows,
        durations,
    };
    let counter = progress.map_or_else(|| Arc::new(AtomicU64::new(0)), |p| p.done.clone());
    if let Some(memory_limit) = memory_limit {
        let work_dir =
            work_dir.ok_or_else(|| PyValueError::new_err("memory_limit needs a work_dir for its spill files"))?;
        let streaming = Streaming { memory_limit, work_dir };
        let data = py
            .detach(|| {
                let _allocator = BoundedMemory::new();
                core::run_streaming(&paths, &format, &options, &streaming, &counter)
            })
            .map_err(to_py_err)?;
        return streamed(py, data);
    }
    let data = py.detach(|| core::run(&paths, &format, &options, &counter)).map_err(to_py_err)?;

    let out = PyDict::new(py);
    out.set_item("session_data", data.session_keys.data.into_pyarray(py))?;
    out.set_item("session_offsets", data.session_keys.offsets.into_pyarray(py))?;
    out.set_item("offsets", data.offsets.into_pyarray(py))?;
    out.set_item("items", data.items.into_pyarray(py))?;
    out.set_item("skips", data.skips.into_pyarray(py))?;
    out.set_item("timestamps", data.timestamps.map(|t| t.into_pyarray(py)))?;
    out.set_item("train_end", data.train_end.into_pyarray(py))?;
    out.set_item("valid_target", data.valid_target.into_pyarray(py))?;
    out.set_item("test_target", data.test_target.into_pyarray(py))?;
    out.set_item("vocab_data", data.vocab.data.into_pyarray(py))?;
    out.set_item("vocab_offsets", data.vocab.offsets.into_pyarray(py))?;
    out.set_item("counts", data.counts.into_pyarray(py))?;
    out.set_item("rows_read", data.rows_read)?;
    out.set_item("bad_rows", data.bad_rows)?;
    out.set_item("bytes", data.bytes)?;
    out.set_item("files", data.files.iter().map(|f| f.to_string_lossy().into_owned()).collect::<Vec<_>>())?;
    Ok(out)
}

/// The result of a streaming ingest: the per-row and per-session columns as files, the rest as arrays.
fn streamed(py: Python<'_>, data: Streamed) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    let columns = PyDict::new(py);
    for (name, path) in &data.columns {
        columns.set_item(*name, path.to_string_lossy().into_owned())?;
    }
    out.set_item("columns", columns)?;
    out.set_item("n_rows", data.n_rows)?;
    out.set_item("n_sessions", data.n_sessions)?;
    out.set_item("n_skipped", data.n_skipped)?;
    out.set_item("n_valid", data.n_valid)?;
    out.set_item("n_test", data.n_test)?;
    out.set_item("vocab_data", data.vocab.data.into_pyarray(py))?;
    out.set_item("vocab_offsets", data.vocab.offsets.into_pyarray(py))?;
    out.set_item("counts", data.counts.into_pyarray(py))?;
    out.set_item("rows_read", data.rows_read)?;
    out.set_item("bad_rows", data.bad_rows)?;
    out.set_item("bytes", data.bytes)?;
    out.set_item("files", data.files.iter().map(|f| f.to_string_lossy().into_owned()).collect::<Vec<_>>())?;
    out.set_item("partitions", data.partitions)?;
    out.set_item("spilled_bytes", data.spilled_bytes)?;
    Ok(out)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<IngestProgress>()?;
    m.add_function(wrap_pyfunction!(input_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(run_ingest, m)?)?;
    Ok(())
}

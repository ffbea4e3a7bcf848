//! Bindings of the synthetic MSSD generator.

use std::path::PathBuf;

use pyo3::prelude::*;

use super::to_py_err;
use crate::synth::{self, SynthConfig};

/// Writes a synthetic MSSD log to `path` (gzip if it ends in .gz); returns the row count.
#[pyfunction]
#[pyo3(signature = (
    path, *, n_sessions, n_items, n_tastes, on_taste_prob, skip_prob_on, skip_prob_off,
    min_length, max_length, zipf_exponent, seed, chart_exponent = 0.0, chart_keep_share = 0.0,
    dislike_share = 0.0, n_threads = 0
))]
#[allow(clippy::too_many_arguments)]
fn generate_mssd(
    py: Python<'_>,
    path: PathBuf,
    n_sessions: usize,
    n_items: usize,
    n_tastes: usize,
    on_taste_prob: f64,
    skip_prob_on: f64,
    skip_prob_off: f64,
    min_length: usize,
    max_length: usize,
    zipf_exponent: f64,
    seed: u64,
    chart_exponent: f64,
    chart_keep_share: f64,
    dislike_share: f64,
    n_threads: usize,
) -> PyResult<u64> {
    let config = SynthConfig {
        n_sessions,
        n_items,
        n_tastes,
        on_taste_prob,
        skip_prob_on,
        skip_prob_off,
        min_length,
        max_length,
        zipf_exponent,
        chart_exponent,
        chart_keep_share,
        dislike_share,
        seed,
        n_threads,
    };
    py.detach(|| synth::generate_mssd(&path, &config)).map_err(to_py_err)
}

/// Track ids of items 0..n_items as the generator writes them (item i has taste i % n_tastes).
#[pyfunction]
fn synth_track_ids(n_items: usize) -> Vec<String> {
    (0..n_items).map(synth::track_id).collect()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(generate_mssd, m)?)?;
    m.add_function(wrap_pyfunction!(synth_track_ids, m)?)?;
    Ok(())
}

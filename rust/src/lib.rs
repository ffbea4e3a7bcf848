//! negrec-fast core: streaming-log ingest, skip labelling, session building and
//! per-epoch negative sampling.
//!
//! Everything outside `python` is plain Rust with no PyO3 types, tested by `cargo test`.
//! The `python` module (feature `python`) is the thin binding layer that maturin builds
//! into `negrec_fast._core`.

pub mod error;
mod hint;

// Ingest: raw logs -> labelled, encoded sessions.
pub mod ingest;

// Training-time data: negative sampling, batching, the synthetic generator.
pub mod batching;
pub mod sampler;
pub mod synth;

#[cfg(feature = "python")]
mod python;

//! Bindings of the negative sampler and the prefetching batch loader.
//!
//! Batches come back as numpy arrays that own the Rust buffers (no copy); the GIL is
//! released while waiting for the background thread.

use std::sync::Mutex;

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArrayDyn};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use super::to_py_err;
use crate::batching::{Batch, BatchLoader, EpochError, EpochIter, Exclude, LoaderConfig, Sessions, Windows};
use crate::sampler::{Distribution, NegativeSampler, Scratch};

fn slice<'a, T: numpy::Element, D: numpy::ndarray::Dimension>(
    array: &'a numpy::PyReadonlyArray<'_, T, D>,
    name: &str,
) -> PyResult<&'a [T]> {
    array.as_slice().map_err(|_| PyValueError::new_err(format!("{name} must be a C-contiguous array")))
}

fn build_sampler(
    vocab_size: usize,
    distribution: &str,
    alpha: f64,
    item_counts: Option<&[u64]>,
    seed: u64,
) -> PyResult<NegativeSampler> {
    let dist = Distribution::parse(distribution, alpha).map_err(to_py_err)?;
    NegativeSampler::new(vocab_size, dist, item_counts, seed).map_err(to_py_err)
}

/// Draws K distinct negatives per batch, keyed by (seed, epoch, rank, batch_index).
#[pyclass(module = "negrec_fast._core", name = "NegativeSampler", frozen)]
struct PyNegativeSampler {
    inner: NegativeSampler,
    scratch: Mutex<Scratch>,
}

#[pymethods]
impl PyNegativeSampler {
    #[new]
    #[pyo3(signature = (vocab_size, *, distribution = "uniform", alpha = 1.0, item_counts = None, seed = 0))]
    fn new(
        vocab_size: usize,
        distribution: &str,
        alpha: f64,
        item_counts: Option<PyReadonlyArray1<'_, u64>>,
        seed: u64,
    ) -> PyResult<Self> {
        let counts = match &item_counts {
            Some(c) => Some(slice(c, "item_counts")?),
            None => None,
        };
        let inner = build_sampler(vocab_size, distribution, alpha, counts, seed)?;
        Ok(PyNegativeSampler { inner, scratch: Mutex::new(Scratch::default()) })
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// (ids int64[k], log_pi float32[k]): k distinct ids, none reserved, none in `exclude`,
    /// and the log of each one's probability to be among the k.
    #[pyo3(signature = (exclude, k, *, epoch = 0, rank = 0, batch_index = 0))]
    #[allow(clippy::type_complexity)]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        exclude: PyReadonlyArrayDyn<'py, i64>,
        k: usize,
        epoch: u64,
        rank: u64,
        batch_index: u64,
    ) -> PyResult<(Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<f32>>)> {
        let exclude = slice(&exclude, "exclude")?;
        let (mut ids, mut log_pi) = (Vec::new(), Vec::new());
        let mut rng = self.inner.batch_rng(epoch, rank, batch_index);
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.sample_into(exclude, k, &mut rng, &mut scratch, &mut ids, &mut log_pi).map_err(to_py_err)?;
        Ok((ids.into_pyarray(py), log_pi.into_pyarray(py)))
    }

    /// log q of each id (-inf for reserved and never-drawn ids).
    fn log_prob<'py>(&self, py: Python<'py>, ids: PyReadonlyArrayDyn<'py, i64>) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let logq = self.inner.log_prob(slice(&ids, "ids")?).map_err(to_py_err)?;
        Ok(logq.into_pyarray(py))
    }
}

/// Builds left-padded training batches with negatives in a background thread.
#[pyclass(module = "negrec_fast._core", name = "BatchLoader", frozen)]
struct PyBatchLoader {
    inner: BatchLoader,
    /// Read-only uint64 [vocab_size]: plays of each id before `train_end`.
    train_item_counts: Py<PyArray1<u64>>,
}

#[pymethods]
impl PyBatchLoader {
    #[new]
    #[pyo3(signature = (
        offsets, items, skips, train_end, *, vocab_size, batch_size = 256, seq_len = 51,
        n_negatives = 1000, distribution = "uniform", alpha = 1.0, item_counts = None, seed = 0,
        rank = 0, world_size = 1, shuffle = true, drop_last = false, prefetch = 4, windows = "all",
        exclude = "all"
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        offsets: PyReadonlyArray1<'_, i64>,
        items: PyReadonlyArray1<'_, u32>,
        skips: PyReadonlyArray1<'_, u8>,
        train_end: PyReadonlyArray1<'_, i32>,
        vocab_size: usize,
        batch_size: usize,
        seq_len: usize,
        n_negatives: usize,
        distribution: &str,
        alpha: f64,
        item_counts: Option<PyReadonlyArray1<'_, u64>>,
        seed: u64,
        rank: usize,
        world_size: usize,
        shuffle: bool,
        drop_last: bool,
        prefetch: usize,
        windows: &str,
        exclude: &str,
    ) -> PyResult<Self> {
        let windows = Windows::parse(windows).map_err(to_py_err)?;
        let exclude = Exclude::parse(exclude).map_err(to_py_err)?;
        let (o, i, s, t) = (
            slice(&offsets, "offsets")?,
            slice(&items, "items")?,
            slice(&skips, "skips")?,
            slice(&train_end, "train_end")?,
        );
        let (sessions, train_counts) = py
            .detach(|| {
                let sessions = Sessions::new(o.to_vec(), i.to_vec(), s.to_vec(), t.to_vec(), vocab_size)?;
                let counts = sessions.train_item_counts(vocab_size)?;
                Ok((sessions, counts))
            })
            .map_err(to_py_err)?;
        // Popularity without explicit counts uses the training plays only, so that
        // held-out targets do not shape the negatives.
        let counts = match &item_counts {
            Some(c) => slice(c, "item_counts")?,
            None => &train_counts,
        };
        let sampler = build_sampler(vocab_size, distribution, alpha, Some(counts), seed)?;
        let config = LoaderConfig {
            batch_size,
            seq_len,
            n_negatives,
            seed,
            rank,
            world_size,
            shuffle,
            drop_last,
            prefetch,
            windows,
            exclude,
        };
        let inner = BatchLoader::new(sessions, sampler, config).map_err(to_py_err)?;
        let train_item_counts = train_counts.into_pyarray(py);
        train_item_counts.call_method1("setflags", (false,))?;
        Ok(PyBatchLoader { inner, train_item_counts: train_item_counts.unbind() })
    }

    /// Plays of each id among the training plays (before `train_end`), uint64
    /// [vocab_size], read-only; reserved ids 0.
    #[getter]
    fn train_item_counts<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        self.train_item_counts.bind(py).clone()
    }

    /// Batches per epoch for this rank.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Training examples (windows of sessions with train_end >= 2) over all ranks.
    #[getter]
    fn n_examples(&self) -> usize {
        self.inner.n_examples()
    }

    /// This rank's examples for `epoch`, in batch order: (session indices, window ends),
    /// each uint32; a window ends before play `end` of its session.
    fn shard<'py>(&self, py: Python<'py>, epoch: u64) -> (Bound<'py, PyArray1<u32>>, Bound<'py, PyArray1<u32>>) {
        let (sessions, ends): (Vec<u32>, Vec<u32>) = self.inner.shard(epoch).iter().map(|e| (e.session, e.end)).unzip();
        (sessions.into_pyarray(py), ends.into_pyarray(py))
    }

    /// Iterator over the batches of `epoch`, starting at batch `start_batch`.
    #[pyo3(signature = (epoch, start_batch = 0))]
    fn epoch(&self, epoch: u64, start_batch: usize) -> PyResult<PyEpochIterator> {
        let iter = self.inner.epoch(epoch, start_batch).map_err(to_py_err)?;
        Ok(PyEpochIterator { inner: Some(iter) })
    }
}

type PyBatch<'py> = (
    Bound<'py, PyArray2<i64>>,
    Bound<'py, PyArray2<bool>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<i64>>,
);

fn to_numpy(py: Python<'_>, b: Batch) -> PyResult<PyBatch<'_>> {
    let shape = (b.rows, b.seq_len);
    let shape_err = |e: numpy::ndarray::ShapeError| PyValueError::new_err(e.to_string());
    Ok((
        Array2::from_shape_vec(shape, b.items).map_err(shape_err)?.into_pyarray(py),
        Array2::from_shape_vec(shape, b.skips).map_err(shape_err)?.into_pyarray(py),
        b.negatives.into_pyarray(py),
        b.neg_logq.into_pyarray(py),
        b.sessions.into_pyarray(py),
    ))
}

/// Yields (items, skips, negatives, neg_logq, sessions) numpy tuples; `close()` or
/// dropping it stops the background thread.
#[pyclass(module = "negrec_fast._core", name = "EpochIterator")]
struct PyEpochIterator {
    inner: Option<EpochIter>,
}

#[pymethods]
impl PyEpochIterator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<PyBatch<'py>>> {
        let Some(iter) = self.inner.as_mut() else {
            return Ok(None);
        };
        match py.detach(|| iter.next()) {
            Some(Ok(batch)) => Ok(Some(to_numpy(py, batch)?)),
            Some(Err(e)) => {
                self.close(py);
                Err(match e {
                    EpochError::Build(e) => to_py_err(e),
                    EpochError::Worker(message) => PyRuntimeError::new_err(message),
                })
            }
            None => {
                self.close(py);
                Ok(None)
            }
        }
    }

    /// Batches not yet returned.
    fn __len__(&self) -> usize {
        self.inner.as_ref().map_or(0, EpochIter::remaining)
    }

    /// Stops the background thread (waits for the batch it is building).
    fn close(&mut self, py: Python<'_>) {
        if let Some(iter) = self.inner.take() {
            py.detach(move || drop(iter));
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNegativeSampler>()?;
    m.add_class::<PyBatchLoader>()?;
    m.add_class::<PyEpochIterator>()?;
    Ok(())
}

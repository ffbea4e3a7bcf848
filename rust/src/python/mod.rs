//! PyO3 bindings: the `negrec_fast._core` extension module.
//!
//! Thin wrappers only: argument conversion, GIL release around heavy work, and the
//! mapping of core errors onto Python exception classes.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::error::Error;

mod batching;
mod ingest;
mod synth;

/// mimalloc keeps freed pages for reuse for a while (glibc returns large blocks to the system
/// at once), so repeated ingests and epochs do not pay a zeroed page fault per 4 KiB of output
/// again. Built with local-dynamic TLS, as the module is loaded with `dlopen`.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

create_exception!(_core, NegrecError, PyException, "Base class of negrec-fast errors.");
create_exception!(
    _core,
    InputError,
    NegrecError,
    "Malformed or unusable input; the message names file, line and column."
);

pub(crate) fn to_py_err(err: Error) -> PyErr {
    match err {
        Error::Config(message) => pyo3::exceptions::PyValueError::new_err(message),
        other => InputError::new_err(other.to_string()),
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("NegrecError", m.py().get_type::<NegrecError>())?;
    m.add("InputError", m.py().get_type::<InputError>())?;
    ingest::register(m)?;
    batching::register(m)?;
    synth::register(m)?;
    Ok(())
}

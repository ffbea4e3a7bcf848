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

/// How long freed pages stay mapped for reuse, in ms: mimalloc's own default is 1 s, so an
/// ingest or epoch that comes a few seconds after the last one would fault all its pages in
/// (zeroed) again. 10 s is jemalloc's default dirty-page decay. `MIMALLOC_PURGE_DELAY` in
/// the environment still wins.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

#[cfg(all(target_os = "linux", not(target_env = "musl")))]
fn configure_allocator() {
    /// `mi_option_purge_delay` in mimalloc.h (v2 and v3); the Rust bindings name no constant.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() && std::env::var_os("MIMALLOC_RESET_DELAY").is_none() {
        // SAFETY: sets one integer option; called once, while the module is being imported.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

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
    #[cfg(all(target_os = "linux", not(target_env = "musl")))]
    configure_allocator();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("NegrecError", m.py().get_type::<NegrecError>())?;
    m.add("InputError", m.py().get_type::<InputError>())?;
    ingest::register(m)?;
    batching::register(m)?;
    synth::register(m)?;
    Ok(())
}

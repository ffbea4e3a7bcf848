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

/// The allocator set for bounded memory while a streaming ingest runs (restored when the last
/// one ends): transparent huge pages off for the process, and freed pages returned at once.
/// mimalloc advises huge pages on its arenas, so each 2 MiB region of them touched at all is
/// resident whole, and it keeps freed pages for `PURGE_DELAY_MS`: the resident set would follow
/// every region each phase touched (several times the bytes in use) instead of the memory
/// limit. The in-memory ingest keeps both (fewer page faults).
pub(crate) struct BoundedMemory(());

#[cfg(all(target_os = "linux", not(target_env = "musl")))]
mod bounded {
    /// `mi_option_purge_delay` (see `configure_allocator`).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

    /// Streaming ingests running, whether THP was off before the first, and the purge delay then.
    pub static STATE: std::sync::Mutex<(usize, bool, std::ffi::c_long)> = std::sync::Mutex::new((0, false, 0));

    /// `prctl(option, arg, 0, 0, 0)`: the kernel rejects non-zero unused arguments.
    fn prctl(option: libc::c_int, arg: libc::c_ulong) -> libc::c_int {
        // SAFETY: the THP options take integer arguments and only read or set a flag of this process.
        unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) }
    }

    pub fn enter() {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 == 0 {
            state.1 = prctl(libc::PR_GET_THP_DISABLE, 0) == 1;
            if !state.1 {
                prctl(libc::PR_SET_THP_DISABLE, 1);
            }
            // SAFETY: reads and sets one integer option.
            unsafe {
                state.2 = libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY);
                libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
            }
        }
        state.0 += 1;
    }

    pub fn leave() {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        state.0 -= 1;
        if state.0 == 0 {
            if !state.1 {
                prctl(libc::PR_SET_THP_DISABLE, 0);
            }
            // SAFETY: as in `enter`.
            unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, state.2) };
        }
    }
}

impl BoundedMemory {
    pub fn new() -> Self {
        #[cfg(all(target_os = "linux", not(target_env = "musl")))]
        bounded::enter();
        BoundedMemory(())
    }
}

impl Drop for BoundedMemory {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", not(target_env = "musl")))]
        bounded::leave();
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

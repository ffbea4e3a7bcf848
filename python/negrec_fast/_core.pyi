"""Type stubs of the Rust extension `negrec_fast._core`."""

from __future__ import annotations

__version__: str

class NegrecError(Exception): ...
class InputError(NegrecError): ...

# --- ingest (rust/src/python/ingest.rs) ---

# --- sampling and batching (rust/src/python/batching.rs) ---

# --- synthetic data (rust/src/python/synth.rs) ---

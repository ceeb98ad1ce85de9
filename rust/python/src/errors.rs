//! Exceptions raised by `gateway._core`, and the guard that turns a Rust
//! panic into one of them instead of tearing down the interpreter.

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};

create_exception!(
    _core,
    CoreError,
    PyRuntimeError,
    "An internal fault in the Rust core (a bug); the operation did not happen."
);
create_exception!(
    _core,
    DkimKeyError,
    PyValueError,
    "A DKIM key or signer setting that cannot be used."
);
create_exception!(
    _core,
    DkimSignError,
    PyRuntimeError,
    "Signing a message failed."
);

/// Run `f`, turning a panic into `CoreError` naming the operation.
pub fn guarded<T>(operation: &str, f: impl FnOnce() -> T) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        CoreError::new_err(format!("internal error in {operation}: {message}"))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("CoreError", py.get_type::<CoreError>())?;
    m.add("DkimKeyError", py.get_type::<DkimKeyError>())?;
    m.add("DkimSignError", py.get_type::<DkimSignError>())?;
    Ok(())
}

//! `gateway._core`: the thin PyO3 layer over `gateway-core`.
//!
//! Only conversions live here. Per-byte work runs with the GIL released
//! (`Python::detach`) so the asyncio loop keeps serving SMTP meanwhile, and
//! every call into the core is guarded so a panic becomes `CoreError`.

mod dkim;
mod errors;
mod prepare;
mod scan;
mod scheduler;
mod sync_writer;
mod view;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "MAX_LINE_OCTETS",
        gateway_core::message_scan::MAX_LINE_OCTETS,
    )?;
    m.add(
        "DEFAULT_SIGNED_HEADERS",
        gateway_core::dkim::DEFAULT_SIGNED_HEADERS.to_vec(),
    )?;
    m.add("LINT_CODES", gateway_core::lint::FINDING_CODES.to_vec())?;
    errors::register(m)?;
    m.add_class::<scan::MessageScan>()?;
    m.add_class::<view::MessageView>()?;
    m.add_class::<view::MimePart>()?;
    m.add_class::<prepare::Finding>()?;
    m.add_class::<prepare::PreparedMessage>()?;
    m.add_class::<dkim::DkimSigner>()?;
    m.add_class::<scheduler::SchedulerQueues>()?;
    m.add_class::<scheduler::RateLimiter>()?;
    m.add_class::<scheduler::EventWindow>()?;
    m.add_class::<scheduler::AdaptiveLimit>()?;
    m.add_class::<sync_writer::SyncWriter>()?;
    m.add_function(wrap_pyfunction!(scan::scan_message, m)?)?;
    m.add_function(wrap_pyfunction!(scan::new_queue_id, m)?)?;
    m.add_function(wrap_pyfunction!(scan::dot_stuff, m)?)?;
    m.add_function(wrap_pyfunction!(view::parse_message, m)?)?;
    m.add_function(wrap_pyfunction!(prepare::prepare_message, m)?)?;
    m.add_function(wrap_pyfunction!(dkim::sign_message, m)?)?;
    m.add_function(wrap_pyfunction!(scheduler::parse_rate, m)?)?;
    Ok(())
}

//! `MessageScan`, `scan_message`, `dot_stuff` and `new_queue_id`: the one-pass
//! scan of a received message and the small helpers around the spool.

use gateway_core::{
    dot_stuff as core_dot_stuff, scan_and_normalize, MessageScan as CoreScan, QueueIdGenerator,
};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::OnceLock;

/// Facts about a received message, measured after line-ending normalisation.
#[pyclass(frozen, get_all, module = "gateway._core")]
#[derive(Debug, Clone)]
pub struct MessageScan {
    size: usize,
    lines: usize,
    bare_lf: usize,
    bare_cr: usize,
    longest_line: usize,
    long_lines: usize,
    has_8bit: bool,
    header_8bit: bool,
    has_nul: bool,
    body_offset: Option<usize>,
}

impl From<CoreScan> for MessageScan {
    fn from(s: CoreScan) -> Self {
        Self {
            size: s.size,
            lines: s.lines,
            bare_lf: s.bare_lf,
            bare_cr: s.bare_cr,
            longest_line: s.longest_line,
            long_lines: s.long_lines,
            has_8bit: s.has_8bit,
            header_8bit: s.header_8bit,
            has_nul: s.has_nul,
            body_offset: s.body_offset,
        }
    }
}

#[pymethods]
impl MessageScan {
    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}

/// Normalise line endings to CRLF and scan the message; returns the
/// (possibly unchanged) bytes and a `MessageScan`.
#[pyfunction]
pub fn scan_message<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
) -> (Bound<'py, PyBytes>, MessageScan) {
    let raw = data.as_bytes();
    let (changed, scan) = py.detach(|| {
        let (out, scan) = scan_and_normalize(raw);
        let changed = match out {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(v) => Some(v),
        };
        (changed, scan)
    });
    let bytes = match changed {
        Some(v) => PyBytes::new(py, &v),
        None => data.clone(),
    };
    (bytes, scan.into())
}

/// The DATA payload for a message: dot-stuffed, ending in CRLF.CRLF.
#[pyfunction]
pub fn dot_stuff<'py>(py: Python<'py>, data: &Bound<'py, PyBytes>) -> Bound<'py, PyBytes> {
    let raw = data.as_bytes();
    let out = py.detach(|| core_dot_stuff(raw));
    PyBytes::new(py, &out)
}

fn generator() -> &'static QueueIdGenerator {
    static GEN: OnceLock<QueueIdGenerator> = OnceLock::new();
    GEN.get_or_init(QueueIdGenerator::new)
}

/// A new queue ID: 16 characters, unique, sortable by creation time.
#[pyfunction]
pub fn new_queue_id() -> String {
    generator().next_id()
}

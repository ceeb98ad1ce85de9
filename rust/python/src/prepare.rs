//! `prepare_message`: normalise, parse, lint and repair a received message.

use crate::errors::guarded;
use crate::scan::MessageScan;
use crate::view::MessageView;
use gateway_core::lint::{prepare, Finding as CoreFinding, FixOptions};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Arc;

/// One lint finding.
#[pyclass(frozen, get_all, module = "gateway._core")]
#[derive(Debug, Clone)]
pub struct Finding {
    code: &'static str,
    detail: String,
    fixed: bool,
}

impl From<CoreFinding> for Finding {
    fn from(f: CoreFinding) -> Self {
        Self {
            code: f.code,
            detail: f.detail,
            fixed: f.fixed,
        }
    }
}

#[pymethods]
impl Finding {
    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}

/// A message after `prepare_message`.
#[pyclass(frozen, get_all, module = "gateway._core")]
pub struct PreparedMessage {
    /// The normalised and repaired bytes.
    data: Py<PyBytes>,
    view: Py<MessageView>,
    scan: MessageScan,
    findings: Vec<Finding>,
}

/// Normalise line endings, parse, lint, and add Date / Message-ID /
/// MIME-Version when missing (only those given). The GIL is released.
#[pyfunction]
#[pyo3(signature = (data, *, smtputf8 = false, message_id = None, date = None))]
pub fn prepare_message(
    py: Python<'_>,
    data: &Bound<'_, PyBytes>,
    smtputf8: bool,
    message_id: Option<&str>,
    date: Option<&str>,
) -> PyResult<PreparedMessage> {
    let raw = data.as_bytes();
    let options = FixOptions {
        smtputf8,
        message_id,
        date,
    };
    let prepared = py.detach(|| guarded("prepare_message", || prepare(raw, &options)))?;
    let bytes = if prepared.message.raw() == raw {
        data.clone().unbind()
    } else {
        PyBytes::new(py, prepared.message.raw()).unbind()
    };
    Ok(PreparedMessage {
        data: bytes,
        view: Py::new(
            py,
            MessageView {
                inner: Arc::new(prepared.message),
            },
        )?,
        scan: prepared.scan.into(),
        findings: prepared.findings.into_iter().map(Finding::from).collect(),
    })
}

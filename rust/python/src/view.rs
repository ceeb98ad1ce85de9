//! `MessageView`, `MimePart` and `parse_message`: the parsed view of a message
//! that plugins and the gateway read.

use crate::errors::guarded;
use gateway_core::message_view::{AddressField, ParsedMessage, PartInfo};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Arc;

/// One node of the MIME tree (parts are numbered depth-first; 0 is the root).
#[pyclass(frozen, get_all, module = "gateway._core")]
#[derive(Debug, Clone)]
pub struct MimePart {
    id: usize,
    kind: &'static str,
    content_type: String,
    charset: Option<String>,
    disposition: Option<String>,
    filename: Option<String>,
    transfer_encoding: Option<String>,
    size: usize,
    children: Vec<usize>,
}

impl From<PartInfo> for MimePart {
    fn from(p: PartInfo) -> Self {
        Self {
            id: p.id,
            kind: p.kind.as_str(),
            content_type: p.content_type,
            charset: p.charset,
            disposition: p.disposition,
            filename: p.filename,
            transfer_encoding: p.transfer_encoding,
            size: p.size,
            children: p.children,
        }
    }
}

#[pymethods]
impl MimePart {
    fn __repr__(&self) -> String {
        format!(
            "MimePart(id={}, content_type={:?}, size={})",
            self.id, self.content_type, self.size
        )
    }
}

/// A parsed, read-only message. Values borrow from one copy of the bytes.
#[pyclass(frozen, module = "gateway._core")]
pub struct MessageView {
    pub(crate) inner: Arc<ParsedMessage>,
}

#[pymethods]
impl MessageView {
    /// Size of the message in octets.
    #[getter]
    fn size(&self) -> usize {
        self.inner.raw().len()
    }

    /// The message bytes.
    #[getter]
    fn raw<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.raw())
    }

    /// Every top-level header as (name, raw value, decoded value).
    fn headers<'py>(&self, py: Python<'py>) -> Vec<(String, Bound<'py, PyBytes>, String)> {
        self.inner
            .headers()
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    PyBytes::new(py, h.raw_value),
                    h.decoded(),
                )
            })
            .collect()
    }

    /// Decoded values of every header with this name (case-insensitive).
    fn get_all(&self, name: &str) -> Vec<String> {
        self.inner.fields_named(name).map(|h| h.decoded()).collect()
    }

    /// Decoded value of the first header with this name, or None.
    fn get(&self, name: &str) -> Option<String> {
        self.inner.fields_named(name).next().map(|h| h.decoded())
    }

    /// Mailboxes of an address header (From, Sender, Reply-To, To, Cc) as
    /// (display name, address) pairs; group members are flattened.
    fn addresses(&self, field: &str) -> PyResult<Vec<(Option<String>, Option<String>)>> {
        let field = AddressField::parse(field).ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown address header {field:?}: use From, Sender, Reply-To, To or Cc"
            ))
        })?;
        Ok(self
            .inner
            .addresses(field)
            .into_iter()
            .map(|m| (m.name, m.address))
            .collect())
    }

    /// Lower-cased domains of the From mailboxes.
    #[getter]
    fn author_domains(&self) -> Vec<String> {
        self.inner.author_domains()
    }

    /// Message-ID without angle brackets.
    #[getter]
    fn message_id(&self) -> Option<&str> {
        self.inner.message_id()
    }

    /// Decoded Subject.
    #[getter]
    fn subject(&self) -> Option<&str> {
        self.inner.subject()
    }

    /// Date as a Unix timestamp, when it parses.
    #[getter]
    fn date(&self) -> Option<i64> {
        self.inner.date()
    }

    /// The MIME tree flattened depth-first.
    fn parts(&self) -> Vec<MimePart> {
        self.inner.parts().into_iter().map(MimePart::from).collect()
    }

    /// Decoded text (UTF-8) of a text part; None for other parts. The GIL is
    /// released while decoding.
    fn part_text(&self, py: Python<'_>, part_id: usize) -> Option<String> {
        let inner = &self.inner;
        py.detach(|| inner.part_text(part_id).map(|t| t.into_owned()))
    }

    /// Decoded body of a part; None for multiparts, unknown ids and bodies
    /// that fail to decode. The GIL is released while decoding.
    fn part_bytes<'py>(&self, py: Python<'py>, part_id: usize) -> Option<Bound<'py, PyBytes>> {
        let inner = &self.inner;
        let decoded = py.detach(|| inner.part_bytes(part_id).map(|b| b.into_owned()));
        decoded.map(|b| PyBytes::new(py, &b))
    }

    fn __repr__(&self) -> String {
        format!(
            "MessageView(size={}, message_id={:?})",
            self.inner.raw().len(),
            self.inner.message_id()
        )
    }
}

/// Parse a message; the GIL is released while parsing.
#[pyfunction]
pub fn parse_message(py: Python<'_>, data: &Bound<'_, PyBytes>) -> PyResult<MessageView> {
    let raw = data.as_bytes();
    let parsed = py.detach(|| guarded("parse_message", || ParsedMessage::parse(raw.to_vec())))?;
    Ok(MessageView {
        inner: Arc::new(parsed),
    })
}

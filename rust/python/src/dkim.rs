//! `DkimSigner` and `sign_message`: DKIM signing with the GIL released.

use crate::errors::{guarded, DkimKeyError, DkimSignError};
use gateway_core::dkim::{parse_canonicalization, Signer, SignerConfig, DEFAULT_SIGNED_HEADERS};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Arc;

/// A private key loaded for one (domain, selector), ready to sign.
#[pyclass(frozen, module = "gateway._core")]
pub struct DkimSigner {
    inner: Arc<Signer>,
}

#[pymethods]
impl DkimSigner {
    #[new]
    #[pyo3(signature = (
        key_pem, domain, selector, *, headers = None,
        header_canonicalization = "relaxed", body_canonicalization = "relaxed", expiration = 0
    ))]
    fn new(
        key_pem: &[u8],
        domain: String,
        selector: String,
        headers: Option<Vec<String>>,
        header_canonicalization: &str,
        body_canonicalization: &str,
        expiration: u64,
    ) -> PyResult<Self> {
        let key_err = |e: gateway_core::dkim::KeyError| DkimKeyError::new_err(e.0);
        let config = SignerConfig {
            domain,
            selector,
            headers: headers.unwrap_or_else(|| {
                DEFAULT_SIGNED_HEADERS
                    .iter()
                    .map(|h| (*h).to_owned())
                    .collect()
            }),
            header_canonicalization: parse_canonicalization(header_canonicalization)
                .map_err(key_err)?,
            body_canonicalization: parse_canonicalization(body_canonicalization)
                .map_err(key_err)?,
            expiration,
        };
        let signer = guarded("DkimSigner", || Signer::new(key_pem, config))?.map_err(key_err)?;
        Ok(Self {
            inner: Arc::new(signer),
        })
    }

    #[getter]
    fn domain(&self) -> &str {
        &self.inner.config().domain
    }

    #[getter]
    fn selector(&self) -> &str {
        &self.inner.config().selector
    }

    /// `rsa-sha256` or `ed25519-sha256`.
    #[getter]
    fn algorithm(&self) -> &'static str {
        self.inner.algorithm().signature_name()
    }

    /// Key size in bits (256 for Ed25519).
    #[getter]
    fn bits(&self) -> usize {
        self.inner.bits()
    }

    /// The header list signatures use (configured plus required, From oversigned).
    #[getter]
    fn headers(&self) -> Vec<String> {
        self.inner.config().headers.clone()
    }

    /// The TXT record to publish at `<selector>._domainkey.<domain>`.
    fn dns_record(&self) -> String {
        self.inner.dns_record()
    }

    /// The `DKIM-Signature:` header field for `data`, ending in CRLF.
    fn sign<'py>(&self, py: Python<'py>, data: &Bound<'py, PyBytes>) -> PyResult<String> {
        let raw = data.as_bytes();
        let signer = &self.inner;
        py.detach(|| guarded("DkimSigner.sign", || signer.sign(raw)))?
            .map_err(|e| DkimSignError::new_err(e.0))
    }

    fn __repr__(&self) -> String {
        format!(
            "DkimSigner(domain={:?}, selector={:?}, algorithm={:?}, bits={})",
            self.inner.config().domain,
            self.inner.config().selector,
            self.inner.algorithm().signature_name(),
            self.inner.bits()
        )
    }
}

/// Sign `data` with every signer and return it with the signatures prepended
/// (first signer on top). The GIL is released for all of it.
#[pyfunction]
pub fn sign_message<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
    signers: Vec<Py<DkimSigner>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let raw = data.as_bytes();
    let signers: Vec<Arc<Signer>> = signers.iter().map(|s| s.get().inner.clone()).collect();
    let signed = py
        .detach(|| {
            guarded("sign_message", || -> Result<Vec<u8>, String> {
                let mut headers = Vec::with_capacity(signers.len());
                for signer in &signers {
                    headers.push(signer.sign(raw).map_err(|e| e.0)?);
                }
                let mut out =
                    Vec::with_capacity(raw.len() + headers.iter().map(String::len).sum::<usize>());
                for header in &headers {
                    out.extend_from_slice(header.as_bytes());
                }
                out.extend_from_slice(raw);
                Ok(out)
            })
        })?
        .map_err(DkimSignError::new_err)?;
    Ok(PyBytes::new(py, &signed))
}

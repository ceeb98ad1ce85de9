//! DKIM signing (RFC 6376) with RSA-SHA256 and Ed25519-SHA256 (RFC 8463),
//! built on the `mail-auth` crate with the `aws-lc-rs` backend.
//!
//! mail-auth supplies the keys, header selection and canonicalization, and the
//! signature's serialization. The body canonicalization is ours
//! ([`write_canonical_body`]): mail-auth 0.13.3's relaxed body canonicalization
//! keeps line breaks before a whitespace-only line at the end of the body, so
//! dkimpy and OpenDKIM reject such signatures (found by this project's tests;
//! later mail-auth releases need a newer rustc than ours).
//!
//! A [`Signer`] is made once per (domain, selector) from a PEM key and reused
//! for every message; it is `Send + Sync`, so several threads sign at once.

use base64::Engine as _;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderStream, HeaderWriter, Writable, Writer};
use mail_auth::dkim::{Canonicalization, Signature};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use std::fmt;

/// Headers signed when the operator configures none. From is listed twice so
/// it is oversigned: a second From added in transit breaks the signature.
/// Headers absent from a message are still listed in h= (mail-auth does that),
/// which stops anyone adding them later.
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Sender",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
];

/// Headers every signature covers whatever the configuration says: From
/// (RFC 6376 §5.4) and the one-click unsubscribe pair (RFC 8058 §4).
const REQUIRED_SIGNED_HEADERS: &[&str] = &["From", "List-Unsubscribe", "List-Unsubscribe-Post"];

const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const RSA_ENCRYPTION_ALGORITHM: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rsa,
    Ed25519,
}

impl KeyAlgorithm {
    /// The `k=` tag value of the DNS record.
    pub fn dns_name(self) -> &'static str {
        match self {
            Self::Rsa => "rsa",
            Self::Ed25519 => "ed25519",
        }
    }

    /// The `a=` tag value of the signature.
    pub fn signature_name(self) -> &'static str {
        match self {
            Self::Rsa => "rsa-sha256",
            Self::Ed25519 => "ed25519-sha256",
        }
    }
}

/// A key or configuration that cannot be used for signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

/// Parse a canonicalization name: `relaxed` or `simple`.
pub fn parse_canonicalization(name: &str) -> Result<Canonicalization, KeyError> {
    match name {
        "relaxed" => Ok(Canonicalization::Relaxed),
        "simple" => Ok(Canonicalization::Simple),
        other => Err(KeyError(format!(
            "unknown canonicalization {other:?} (use \"relaxed\" or \"simple\")"
        ))),
    }
}

/// The header list a signature really uses: the configured one plus the
/// required headers, with From oversigned.
pub fn effective_headers<S: AsRef<str>>(configured: &[S]) -> Vec<String> {
    let mut headers: Vec<String> = configured
        .iter()
        .map(|h| h.as_ref().trim().to_owned())
        .filter(|h| !h.is_empty())
        .collect();
    for required in REQUIRED_SIGNED_HEADERS {
        if !headers.iter().any(|h| h.eq_ignore_ascii_case(required)) {
            headers.push((*required).to_owned());
        }
    }
    if headers
        .iter()
        .filter(|h| h.eq_ignore_ascii_case("From"))
        .count()
        < 2
    {
        headers.push("From".to_owned());
    }
    headers
}

/// Settings for one signature.
#[derive(Debug, Clone)]
pub struct SignerConfig {
    pub domain: String,
    pub selector: String,
    /// Header names to sign; see [`effective_headers`].
    pub headers: Vec<String>,
    pub header_canonicalization: Canonicalization,
    pub body_canonicalization: Canonicalization,
    /// Seconds until the signature expires (`x=`); 0 for none.
    pub expiration: u64,
}

/// A loaded private key and what it signs as.
pub struct Signer {
    key: DkimKey,
    config: SignerConfig,
    algorithm: KeyAlgorithm,
    bits: usize,
    public_key: Vec<u8>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("domain", &self.config.domain)
            .field("selector", &self.config.selector)
            .field("algorithm", &self.algorithm)
            .field("bits", &self.bits)
            .finish()
    }
}

impl Signer {
    /// Load a PEM private key (PKCS#1 RSA, or PKCS#8 RSA or Ed25519).
    pub fn new(pem: &[u8], config: SignerConfig) -> Result<Self, KeyError> {
        check_dns_name("domain", &config.domain)?;
        check_dns_name("selector", &config.selector)?;
        let (key, algorithm, bits, public_key) = load_key(pem)?;
        let headers = effective_headers(&config.headers);
        Ok(Self {
            key,
            config: SignerConfig {
                headers,
                domain: config.domain.to_ascii_lowercase(),
                ..config
            },
            algorithm,
            bits,
            public_key,
        })
    }

    pub fn config(&self) -> &SignerConfig {
        &self.config
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// Key size in bits (256 for Ed25519).
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// The public key as published in `p=`: SubjectPublicKeyInfo DER for RSA,
    /// the raw 32-octet key for Ed25519 (RFC 8463 §4.2).
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// The TXT record to publish at `<selector>._domainkey.<domain>`.
    pub fn dns_record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm.dns_name(),
            base64::engine::general_purpose::STANDARD.encode(&self.public_key)
        )
    }

    /// Sign a CRLF message; returns the `DKIM-Signature:` field ending in CRLF,
    /// ready to prepend.
    pub fn sign(&self, message: &[u8]) -> Result<String, KeyError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.sign_at(message, now)
    }

    /// Sign as of `now` (Unix seconds): the `t=` tag.
    pub fn sign_at(&self, message: &[u8], now: u64) -> Result<String, KeyError> {
        let config = &self.config;
        let fail = |err: String| {
            KeyError(format!(
                "signing as d={} s={} failed: {err}",
                config.domain, config.selector
            ))
        };
        let mut signature = Signature {
            v: 1,
            a: self.key.algorithm(),
            d: config.domain.clone(),
            s: config.selector.clone(),
            h: config.headers.clone(),
            ch: config.header_canonicalization,
            cb: config.body_canonicalization,
            t: now,
            x: if config.expiration > 0 {
                now + config.expiration
            } else {
                0
            },
            ..Default::default()
        };
        let mut fields = headers_of(message);
        let mut has_from = false;
        while let Some((name, _)) = fields.next_header() {
            has_from |= name.trim_ascii().eq_ignore_ascii_case(b"from");
        }
        if !has_from {
            return Err(fail(
                "the message has no From header, which a signature must cover (RFC 6376 5.4)"
                    .into(),
            ));
        }
        let (_, canonical_headers, signed_headers, _) = signature.canonicalize(headers_of(message));
        let body = CanonicalBody {
            body: fields.body(),
            canonicalization: config.body_canonicalization,
        };
        signature.bh = self.key.hash(body).as_ref().to_vec();
        signature.h = signed_headers;
        signature.b = self
            .key
            .sign(SigningInput {
                headers: canonical_headers,
                signature: &signature,
            })
            .map_err(|err| fail(err.to_string()))?;
        Ok(signature.to_header())
    }
}

fn headers_of(message: &[u8]) -> FieldReader<'_> {
    FieldReader {
        message,
        pos: 0,
        body_start: None,
    }
}

/// The header fields of a message as mail-auth's canonicalizers want them:
/// (name, value after the colon including folding and the final CRLF). Its
/// own reader is crate-private.
struct FieldReader<'x> {
    message: &'x [u8],
    pos: usize,
    body_start: Option<usize>,
}

impl<'x> HeaderStream<'x> for FieldReader<'x> {
    fn next_header(&mut self) -> Option<(&'x [u8], &'x [u8])> {
        if self.body_start.is_some() {
            return None;
        }
        let message = self.message;
        let rest = &message[self.pos..];
        for blank in [&b"\r\n"[..], b"\n"] {
            if rest.starts_with(blank) || rest.is_empty() {
                self.body_start = Some(self.pos + if rest.is_empty() { 0 } else { blank.len() });
                return None;
            }
        }
        let mut end = self.pos;
        loop {
            match memchr::memchr(b'\n', &message[end..]) {
                Some(i) => {
                    end += i + 1;
                    if !matches!(message.get(end), Some(b' ' | b'\t')) {
                        break;
                    }
                }
                None => {
                    end = message.len();
                    break;
                }
            }
        }
        let field = &message[self.pos..end];
        self.pos = end;
        Some(match memchr::memchr(b':', field) {
            Some(colon) => (&field[..colon], &field[colon + 1..]),
            None => (field, &b""[..]),
        })
    }

    fn body(&mut self) -> &'x [u8] {
        while self.next_header().is_some() {}
        &self.message[self.body_start.unwrap_or(self.message.len())..]
    }
}

/// What the signature's `b=` covers: the selected headers, canonicalized, then
/// the DKIM-Signature field itself with an empty `b=` (RFC 6376 §3.7).
struct SigningInput<'a, H: Writable> {
    headers: H,
    signature: &'a Signature,
}

impl<H: Writable> Writable for SigningInput<'_, H> {
    fn write(self, writer: &mut impl Writer) {
        self.headers.write(writer);
        self.signature.write(writer, false);
    }
}

struct CanonicalBody<'a> {
    body: &'a [u8],
    canonicalization: Canonicalization,
}

impl Writable for CanonicalBody<'_> {
    fn write(self, writer: &mut impl Writer) {
        // Canonicalization emits many short pieces; hashing them one by one is
        // slow, so they go to the hash in blocks.
        let mut buffered = BlockWriter {
            inner: writer,
            buf: Vec::with_capacity(BLOCK),
        };
        write_canonical_body(self.body, self.canonicalization, &mut buffered);
        buffered.flush();
    }
}

const BLOCK: usize = 16 * 1024;

struct BlockWriter<'w, W: Writer> {
    inner: &'w mut W,
    buf: Vec<u8>,
}

impl<W: Writer> BlockWriter<'_, W> {
    fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.inner.write(&self.buf);
            self.buf.clear();
        }
    }
}

impl<W: Writer> Writer for BlockWriter<'_, W> {
    fn write(&mut self, data: &[u8]) {
        if self.buf.len() + data.len() > BLOCK {
            self.flush();
        }
        if data.len() >= BLOCK {
            self.inner.write(data);
        } else {
            self.buf.extend_from_slice(data);
        }
    }
}

/// RFC 6376 §3.4.3 (simple) and §3.4.4 (relaxed) body canonicalization.
/// Lines end at LF (a preceding CR is part of the line ending).
pub fn write_canonical_body(
    body: &[u8],
    canonicalization: Canonicalization,
    out: &mut impl Writer,
) {
    let mut empty_run = 0usize; // empty lines held back: dropped if they end the body
    for line in body.split_inclusive(|b| *b == b'\n') {
        let content = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        let content = match canonicalization {
            Canonicalization::Simple => content,
            // Trailing whitespace is ignored, so a whitespace-only line is empty.
            Canonicalization::Relaxed => content
                .iter()
                .rposition(|b| *b != b' ' && *b != b'\t')
                .map_or(&content[..0], |end| &content[..=end]),
        };
        if content.is_empty() {
            empty_run += 1;
            continue;
        }
        for _ in 0..empty_run {
            out.write(b"\r\n");
        }
        empty_run = 0;
        match canonicalization {
            Canonicalization::Simple => out.write(content),
            Canonicalization::Relaxed => write_collapsed_whitespace(content, out),
        }
        out.write(b"\r\n");
    }
    // simple: an empty body is one CRLF; relaxed: an empty body stays empty.
    if canonicalization == Canonicalization::Simple && body_is_blank(body) {
        out.write(b"\r\n");
    }
}

/// True when simple canonicalization leaves nothing but line breaks.
fn body_is_blank(body: &[u8]) -> bool {
    body.iter().all(|b| *b == b'\r' || *b == b'\n')
}

/// Each run of spaces and tabs inside a line becomes one space.
fn write_collapsed_whitespace(line: &[u8], out: &mut impl Writer) {
    // Most lines have only single spaces: two SIMD scans prove it.
    if memchr::memchr(b'\t', line).is_none() && memchr::memmem::find(line, b"  ").is_none() {
        out.write(line);
        return;
    }
    let mut start = 0;
    let mut i = 0;
    while i < line.len() {
        if line[i] == b' ' || line[i] == b'\t' {
            out.write(&line[start..i]);
            out.write(b" ");
            while i < line.len() && (line[i] == b' ' || line[i] == b'\t') {
                i += 1;
            }
            start = i;
        } else {
            i += 1;
        }
    }
    out.write(&line[start..]);
}

fn check_dns_name(what: &str, name: &str) -> Result<(), KeyError> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(KeyError(format!("invalid DKIM {what} {name:?}")))
    }
}

type LoadedKey = (DkimKey, KeyAlgorithm, usize, Vec<u8>);

fn load_key(pem: &[u8]) -> Result<LoadedKey, KeyError> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|err| {
        KeyError(format!(
            "not a PEM private key ({err}); expected BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY"
        ))
    })?;
    let is_ed25519 = matches!(&der, PrivateKeyDer::Pkcs8(k)
        if k.secret_pkcs8_der().windows(ED25519_OID.len()).any(|w| w == ED25519_OID));
    if is_ed25519 {
        let PrivateKeyDer::Pkcs8(k) = &der else {
            unreachable!("checked above")
        };
        // OpenSSL writes PKCS#8 v1 (no public key inside); the strict
        // loader wants v2, so use the variant that derives the public key.
        let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(k.secret_pkcs8_der())
            .map_err(|err| KeyError(format!("unusable Ed25519 key: {err}")))?;
        let public = key.public_key();
        return Ok((DkimKey::Ed25519(key), KeyAlgorithm::Ed25519, 256, public));
    }
    if matches!(der, PrivateKeyDer::Sec1(_)) {
        return Err(KeyError(
            "EC (SEC1) keys cannot sign DKIM; use RSA (2048-4096 bits) or Ed25519".into(),
        ));
    }
    let key = RsaKey::<Sha256>::from_key_der(der).map_err(|err| {
        let text = err.to_string();
        if text.contains("TooSmall") {
            KeyError(
                "RSA key is smaller than 2048 bits; the aws-lc crypto backend signs only with \
                 2048-8192-bit keys (generate a 2048-bit or larger key)"
                    .into(),
            )
        } else {
            KeyError(format!("unusable RSA key: {text}"))
        }
    })?;
    let pkcs1 = key.public_key();
    let bits = rsa_modulus_bits(&pkcs1)
        .ok_or_else(|| KeyError("unusable RSA key: malformed public key".into()))?;
    Ok((
        DkimKey::Rsa(key),
        KeyAlgorithm::Rsa,
        bits,
        rsa_spki_der(&pkcs1),
    ))
}

/// DER length octets.
fn der_length(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Wrap a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo, the form DKIM
/// verifiers expect in `p=`.
fn rsa_spki_der(pkcs1: &[u8]) -> Vec<u8> {
    let mut bit_string = vec![0x03];
    der_length(pkcs1.len() + 1, &mut bit_string);
    bit_string.push(0); // no unused bits
    bit_string.extend_from_slice(pkcs1);
    let mut spki = vec![0x30];
    der_length(RSA_ENCRYPTION_ALGORITHM.len() + bit_string.len(), &mut spki);
    spki.extend_from_slice(RSA_ENCRYPTION_ALGORITHM);
    spki.extend_from_slice(&bit_string);
    spki
}

/// Read a DER length at the start of `data`: (length, rest).
fn read_der_length(data: &[u8]) -> Option<(usize, &[u8])> {
    let (&first, rest) = data.split_first()?;
    if first < 0x80 {
        return Some((first as usize, rest));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > std::mem::size_of::<usize>() || rest.len() < n {
        return None;
    }
    let len = rest[..n]
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | *b as usize);
    Some((len, &rest[n..]))
}

/// Modulus size in bits of a PKCS#1 RSAPublicKey.
fn rsa_modulus_bits(pkcs1: &[u8]) -> Option<usize> {
    let (_, rest) = read_der_length(pkcs1.strip_prefix(&[0x30])?)?;
    let (len, rest) = read_der_length(rest.strip_prefix(&[0x02])?)?;
    let modulus = rest.get(..len)?;
    let first = modulus.iter().position(|b| *b != 0)?;
    Some((modulus.len() - first) * 8 - modulus[first].leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test keys generated with `openssl genpkey`; never used outside tests.
    const RSA_2048_PKCS1: &str = include_str!("../testdata/rsa2048.pem");
    const RSA_1024: &str = include_str!("../testdata/rsa1024.pem");
    const ED25519_PKCS8: &str = include_str!("../testdata/ed25519.pem");

    fn config() -> SignerConfig {
        SignerConfig {
            domain: "example.com".into(),
            selector: "s1".into(),
            headers: DEFAULT_SIGNED_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
            header_canonicalization: Canonicalization::Relaxed,
            body_canonicalization: Canonicalization::Relaxed,
            expiration: 0,
        }
    }

    const MESSAGE: &[u8] =
        b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n";

    #[test]
    fn rsa_signature_has_the_expected_tags() {
        let signer = Signer::new(RSA_2048_PKCS1.as_bytes(), config()).unwrap();
        assert_eq!(signer.bits(), 2048);
        assert_eq!(signer.algorithm(), KeyAlgorithm::Rsa);
        let header = signer.sign(MESSAGE).unwrap();
        assert!(header.starts_with(
            "DKIM-Signature: v=1; a=rsa-sha256; s=s1; d=example.com; c=relaxed/relaxed;"
        ));
        assert!(header.ends_with(";\r\n"));
        let unfolded = header.replace("\r\n\t", " ");
        // Present headers bottom-up, then the absent ones (From again: oversigned).
        assert!(
            unfolded.contains("h=Subject:To:From:From:Reply-To:Sender:"),
            "{unfolded}"
        );
        assert!(signer
            .dns_record()
            .starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"));
    }

    #[test]
    fn ed25519_signature_and_record() {
        let signer = Signer::new(ED25519_PKCS8.as_bytes(), config()).unwrap();
        assert_eq!(signer.algorithm(), KeyAlgorithm::Ed25519);
        assert_eq!(signer.public_key().len(), 32);
        assert!(signer.sign(MESSAGE).unwrap().contains("a=ed25519-sha256"));
        assert!(signer.dns_record().starts_with("v=DKIM1; k=ed25519; p="));
    }

    #[test]
    fn small_rsa_keys_and_garbage_are_refused_clearly() {
        let err = Signer::new(RSA_1024.as_bytes(), config()).unwrap_err();
        assert!(err.0.contains("smaller than 2048 bits"), "{err}");
        let err = Signer::new(b"hello", config()).unwrap_err();
        assert!(err.0.contains("not a PEM private key"), "{err}");
        let bad_domain = SignerConfig {
            domain: "exa mple.com".into(),
            ..config()
        };
        let err = Signer::new(RSA_2048_PKCS1.as_bytes(), bad_domain).unwrap_err();
        assert!(err.0.contains("invalid DKIM domain"), "{err}");
    }

    #[test]
    fn required_headers_are_always_signed_and_from_oversigned() {
        let h = effective_headers(&["Subject"]);
        assert_eq!(
            h,
            [
                "Subject",
                "From",
                "List-Unsubscribe",
                "List-Unsubscribe-Post",
                "From"
            ]
        );
        assert_eq!(
            effective_headers(DEFAULT_SIGNED_HEADERS).len(),
            DEFAULT_SIGNED_HEADERS.len()
        );
    }

    fn canon(body: &[u8], c: Canonicalization) -> Vec<u8> {
        let mut out = Vec::new();
        write_canonical_body(body, c, &mut out);
        out
    }

    /// The examples of RFC 6376 §3.4.5, plus the edges dkimpy and OpenDKIM agree on.
    #[test]
    fn body_canonicalization() {
        let body = b" C \r\nD \t E\r\n\r\n\r\n";
        assert_eq!(canon(body, Canonicalization::Relaxed), b" C\r\nD E\r\n");
        assert_eq!(canon(body, Canonicalization::Simple), b" C \r\nD \t E\r\n");
        let ws_tail = b"text   \r\n\t\r\n \r\n\r\n";
        assert_eq!(canon(ws_tail, Canonicalization::Relaxed), b"text\r\n");
        assert_eq!(
            canon(ws_tail, Canonicalization::Simple),
            b"text   \r\n\t\r\n \r\n"
        );
        assert_eq!(canon(b"", Canonicalization::Relaxed), b"");
        assert_eq!(canon(b"", Canonicalization::Simple), b"\r\n");
        assert_eq!(canon(b"\r\n\r\n", Canonicalization::Simple), b"\r\n");
        assert_eq!(
            canon(b"a\r\n\r\nb", Canonicalization::Relaxed),
            b"a\r\n\r\nb\r\n"
        );
        assert_eq!(
            canon(b"a\r\n \r\nb", Canonicalization::Relaxed),
            b"a\r\n\r\nb\r\n"
        );
    }

    #[test]
    fn a_message_without_from_is_not_signed() {
        let signer = Signer::new(ED25519_PKCS8.as_bytes(), config()).unwrap();
        let err = signer.sign(b"Subject: x\r\n\r\nbody\r\n").unwrap_err();
        assert!(err.0.contains("no From header"), "{err}");
    }

    #[test]
    fn canonicalization_names() {
        assert_eq!(
            parse_canonicalization("simple"),
            Ok(Canonicalization::Simple)
        );
        assert!(parse_canonicalization("loose").is_err());
    }
}

//! Any bytes signed with both canonicalizations. Invariants: no panic, and the
//! result is one well-formed header field (ASCII, folded lines, CRLF end).
//! Ed25519 keeps the fuzzer fast; canonicalization and hashing, the code that
//! sees the input, are the same for RSA.
#![no_main]

use gateway_core::dkim::{parse_canonicalization, Signer, SignerConfig, DEFAULT_SIGNED_HEADERS};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const KEY: &str = include_str!("../../core/testdata/ed25519.pem");

fn signers() -> &'static [Signer] {
    static SIGNERS: OnceLock<Vec<Signer>> = OnceLock::new();
    SIGNERS.get_or_init(|| {
        ["relaxed", "simple"]
            .iter()
            .map(|c| {
                let canon = parse_canonicalization(c).unwrap();
                let config = SignerConfig {
                    domain: "example.com".into(),
                    selector: "fuzz".into(),
                    headers: DEFAULT_SIGNED_HEADERS.iter().map(|h| h.to_string()).collect(),
                    header_canonicalization: canon,
                    body_canonicalization: canon,
                    expiration: 0,
                };
                Signer::new(KEY.as_bytes(), config).unwrap()
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    for signer in signers() {
        // A message without any signed header cannot be signed: an error, not a panic.
        if let Ok(header) = signer.sign(data) {
            assert!(header.is_ascii());
            assert!(header.starts_with("DKIM-Signature: v=1;"));
            assert!(header.ends_with("\r\n"));
            let lines: Vec<_> = header.trim_end_matches("\r\n").split("\r\n").collect();
            assert!(lines[1..].iter().all(|l| l.starts_with('\t')));
        }
    }
});

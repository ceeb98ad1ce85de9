//! Any bytes signed with both canonicalizations; the checks are
//! `gateway_core::invariants::check_sign`. Ed25519 keeps the fuzzer fast:
//! canonicalization and hashing, the code that sees the input, are the same
//! for RSA.
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
                    headers: DEFAULT_SIGNED_HEADERS
                        .iter()
                        .map(|h| h.to_string())
                        .collect(),
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
        gateway_core::invariants::check_sign(signer, data);
    }
});

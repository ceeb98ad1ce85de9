//! Any bytes signed with both canonicalizations; the checks are
//! `gateway_core::invariants::check_sign`. Ed25519 keeps the fuzzer fast:
//! canonicalization and hashing, the code that sees the input, are the same
//! for RSA.
#![no_main]

use gateway_core::dkim::Signer;
use gateway_core::invariants::{check_sign, fuzz_signers};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn signers() -> &'static [Signer] {
    static SIGNERS: OnceLock<Vec<Signer>> = OnceLock::new();
    SIGNERS.get_or_init(|| fuzz_signers(include_bytes!("../../core/testdata/ed25519.pem")))
}

fuzz_target!(|data: &[u8]| {
    for signer in signers() {
        check_sign(signer, data);
    }
});

//! The properties the fuzz targets check, shared with `cargo test`, which
//! replays the committed fuzz corpus (`rust/fuzz/corpus`) and the regression
//! inputs (`testdata/regressions`) through them on every run.

use crate::dkim::{parse_canonicalization, Signer, SignerConfig, DEFAULT_SIGNED_HEADERS};
use crate::lint::{lint, prepare, FixOptions};
use crate::message_scan::scan_and_normalize;
use crate::message_view::AddressField;

/// `prepare` on any bytes: no panic; the output has only CRLF line endings;
/// its size is reported right; a fixed finding is gone when linted again;
/// every view accessor works.
pub fn check_prepare(data: &[u8]) {
    let options = FixOptions {
        smtputf8: data.first().is_some_and(|b| b & 1 == 1),
        message_id: Some("<fuzz@gw.example>"),
        date: Some("Mon, 23 Nov 2026 10:00:00 +0000"),
    };
    let prepared = prepare(data, &options);
    let out = prepared.message.raw();
    assert_eq!(prepared.scan.size, out.len());
    let (again, rescan) = scan_and_normalize(out);
    assert_eq!(again.as_ref(), out, "output must already be normalised");
    assert_eq!((rescan.bare_lf, rescan.bare_cr), (0, 0));
    let view = &prepared.message;
    for header in view.headers() {
        let _ = header.decoded();
    }
    for field in [AddressField::From, AddressField::To, AddressField::Cc] {
        let _ = view.addresses(field);
    }
    let _ = (
        view.author_domains(),
        view.message_id(),
        view.subject(),
        view.date(),
    );
    for part in view.parts() {
        let _ = (view.part_text(part.id), view.part_bytes(part.id));
        assert!(
            part.children.iter().all(|c| *c > part.id),
            "children come after their parent"
        );
    }
    let codes: Vec<_> = lint(view, &rescan, options.smtputf8)
        .iter()
        .map(|f| f.code)
        .collect();
    for fixed in prepared.findings.iter().filter(|f| f.fixed) {
        if fixed.code != "missing-mime-version" {
            assert!(
                !codes.contains(&fixed.code),
                "{} still present after fix",
                fixed.code
            );
        }
    }
}

/// The signers the `sign` checks use: one key, relaxed and simple canonicalization.
pub fn fuzz_signers(key_pem: &[u8]) -> Vec<Signer> {
    ["relaxed", "simple"]
        .iter()
        .map(|name| {
            let canon = parse_canonicalization(name).expect("known name");
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
            Signer::new(key_pem, config).expect("a usable test key")
        })
        .collect()
}

/// Signing any bytes: no panic, and a result is one well-formed header field
/// (ASCII, continuation lines folded with a tab, CRLF at the end).
pub fn check_sign(signer: &Signer, data: &[u8]) {
    // A message without a From header cannot be signed: an error, not a panic.
    if let Ok(header) = signer.sign(data) {
        assert!(header.is_ascii());
        assert!(header.starts_with("DKIM-Signature: v=1;"));
        assert!(header.ends_with("\r\n"));
        let lines: Vec<_> = header.trim_end_matches("\r\n").split("\r\n").collect();
        assert!(lines[1..].iter().all(|l| l.starts_with('\t')));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn inputs(dir: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut found: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        found.sort();
        found
    }

    #[test]
    fn prepare_corpus_and_regressions_keep_the_invariants() {
        let mut all = inputs("../fuzz/corpus/prepare");
        all.extend(inputs("testdata/regressions"));
        assert!(all.len() > 100, "the committed corpus is missing");
        for input in &all {
            check_prepare(input);
        }
    }

    #[test]
    fn sign_corpus_keeps_the_invariants() {
        let all = inputs("../fuzz/corpus/sign");
        assert!(all.len() > 100, "the committed corpus is missing");
        for signer in fuzz_signers(include_bytes!("../testdata/ed25519.pem")) {
            for input in &all {
                check_sign(&signer, input);
            }
        }
    }
}

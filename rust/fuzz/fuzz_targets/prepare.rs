//! Any bytes through normalise → parse → lint → fix-up and every view accessor.
//! Invariants: no panic; the output has only CRLF line endings; the reported
//! size matches; fixed findings are really fixed.
#![no_main]

use gateway_core::lint::{lint, prepare, FixOptions};
use gateway_core::message_scan::scan_and_normalize;
use gateway_core::message_view::AddressField;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
    let _ = (view.author_domains(), view.message_id(), view.subject(), view.date());
    for part in view.parts() {
        let _ = (view.part_text(part.id), view.part_bytes(part.id), view.part_raw_body(part.id));
    }
    let codes: Vec<_> = lint(view, &rescan, options.smtputf8).iter().map(|f| f.code).collect();
    for fixed in prepared.findings.iter().filter(|f| f.fixed) {
        if fixed.code != "missing-mime-version" {
            assert!(!codes.contains(&fixed.code), "{} still present after fix", fixed.code);
        }
    }
});

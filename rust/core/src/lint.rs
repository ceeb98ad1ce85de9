//! Message lint and fix-up, run on every relayed message before it is signed.
//!
//! The gateway repairs what is safe to repair before a signature covers it
//! (line endings, a missing Date, Message-ID or MIME-Version) and reports the
//! rest; the operator decides which findings reject a message.

use crate::message_scan::{scan_and_normalize, MessageScan, MAX_LINE_OCTETS};
use crate::message_view::{AddressField, ParsedMessage, PartKind};

/// Every finding code, as reported to Python, logs and metrics.
pub const FINDING_CODES: &[&str] = &[
    "bare-line-endings",
    "missing-date",
    "missing-message-id",
    "missing-mime-version",
    "missing-from",
    "multiple-from",
    "duplicate-header",
    "long-lines",
    "undeclared-8bit",
    "non-ascii-header",
    "nul-byte",
];

/// Header fields RFC 5322 §3.6 allows at most once (From is checked on its own).
const SINGLETON_HEADERS: &[&str] = &[
    "Date",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Message-ID",
    "Subject",
];

/// One problem found in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// One of [`FINDING_CODES`].
    pub code: &'static str,
    /// Human-readable specifics (counts, header names).
    pub detail: String,
    /// Whether the gateway repaired it.
    pub fixed: bool,
}

impl Finding {
    fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            fixed: false,
        }
    }
}

/// What the caller lets `prepare` add to a message.
#[derive(Debug, Clone, Default)]
pub struct FixOptions<'a> {
    /// The client used SMTPUTF8, so UTF-8 header content is declared.
    pub smtputf8: bool,
    /// Message-ID value (with angle brackets) to add when the message has none.
    pub message_id: Option<&'a str>,
    /// Date value (RFC 5322 date-time) to add when the message has none.
    pub date: Option<&'a str>,
}

/// A message after normalisation, lint and fix-up.
#[derive(Debug)]
pub struct Prepared {
    pub message: ParsedMessage,
    /// Scan facts; size, line count and body offset describe the fixed message.
    pub scan: MessageScan,
    pub findings: Vec<Finding>,
}

/// Lint a parsed message; `scan` must describe the same bytes.
pub fn lint(message: &ParsedMessage, scan: &MessageScan, smtputf8: bool) -> Vec<Finding> {
    let mut findings = Vec::new();
    if scan.bare_lf + scan.bare_cr > 0 {
        findings.push(Finding::new(
            "bare-line-endings",
            format!("{} bare LF, {} bare CR", scan.bare_lf, scan.bare_cr),
        ));
    }
    let headers = message.headers();
    let count = |name: &str| {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    if count("Date") == 0 {
        findings.push(Finding::new("missing-date", "no Date header"));
    }
    if count("Message-ID") == 0 {
        findings.push(Finding::new("missing-message-id", "no Message-ID header"));
    }
    let uses_mime = count("Content-Type") + count("Content-Transfer-Encoding") > 0;
    if count("MIME-Version") == 0 && (uses_mime || scan.has_8bit) {
        findings.push(Finding::new(
            "missing-mime-version",
            "MIME content without MIME-Version",
        ));
    }
    match count("From") {
        0 => findings.push(Finding::new("missing-from", "no From header")),
        1 => {}
        n => findings.push(Finding::new("multiple-from", format!("{n} From headers"))),
    }
    if count("From") == 1 && message.addresses(AddressField::From).len() > 1 {
        findings.push(Finding::new(
            "multiple-from",
            "From header lists more than one mailbox",
        ));
    }
    let duplicated: Vec<&str> = SINGLETON_HEADERS
        .iter()
        .copied()
        .filter(|name| count(name) > 1)
        .collect();
    if !duplicated.is_empty() {
        findings.push(Finding::new("duplicate-header", duplicated.join(", ")));
    }
    if scan.long_lines > 0 {
        findings.push(Finding::new(
            "long-lines",
            format!(
                "{} lines over {MAX_LINE_OCTETS} octets, longest {}",
                scan.long_lines, scan.longest_line
            ),
        ));
    }
    if let Some(part) = undeclared_8bit_part(message, scan) {
        findings.push(Finding::new(
            "undeclared-8bit",
            format!("part {part} has 8-bit octets but no 8bit/binary transfer encoding"),
        ));
    }
    if scan.header_8bit && !smtputf8 {
        findings.push(Finding::new(
            "non-ascii-header",
            "raw UTF-8 in headers without SMTPUTF8",
        ));
    }
    if scan.has_nul {
        findings.push(Finding::new("nul-byte", "NUL octet in message"));
    }
    findings
}

/// The first leaf part carrying 8-bit octets without declaring 8bit or binary.
fn undeclared_8bit_part(message: &ParsedMessage, scan: &MessageScan) -> Option<usize> {
    let body_has_8bit = scan.has_8bit && {
        let body = scan
            .body_offset
            .and_then(|o| message.raw().get(o..))
            .unwrap_or_default();
        body.iter().any(|b| *b >= 0x80)
    };
    if !body_has_8bit {
        return None;
    }
    message
        .parts()
        .into_iter()
        .filter(|p| !matches!(p.kind, PartKind::Multipart | PartKind::Message))
        .find(|p| {
            let declared = matches!(p.transfer_encoding.as_deref(), Some("8bit" | "binary"));
            !declared
                && message
                    .part_raw_body(p.id)
                    .is_some_and(|b| b.iter().any(|c| *c >= 0x80))
        })
        .map(|p| p.id)
}

/// Normalise, parse, lint and repair a message received in DATA.
pub fn prepare(raw: &[u8], options: &FixOptions<'_>) -> Prepared {
    let (normalized, mut scan) = scan_and_normalize(raw);
    let mut message = ParsedMessage::parse(normalized.into_owned());
    let mut findings = lint(&message, &scan, options.smtputf8);

    let mut added = Vec::new();
    for finding in &mut findings {
        let line = match finding.code {
            "bare-line-endings" => {
                finding.fixed = true; // scan_and_normalize rewrote them
                continue;
            }
            "missing-date" => options.date.map(|d| format!("Date: {d}\r\n")),
            "missing-message-id" => options.message_id.map(|id| format!("Message-ID: {id}\r\n")),
            "missing-mime-version" => Some("MIME-Version: 1.0\r\n".to_owned()),
            _ => None,
        };
        if let Some(line) = line {
            finding.fixed = true;
            added.push(line);
        }
    }
    if !added.is_empty() {
        let prefix: String = added.concat();
        let mut data = Vec::with_capacity(prefix.len() + message.raw().len());
        data.extend_from_slice(prefix.as_bytes());
        data.extend_from_slice(message.raw());
        scan.size = data.len();
        scan.lines += added.len();
        scan.body_offset = scan.body_offset.map(|o| o + prefix.len());
        message = ParsedMessage::parse(data);
    }
    Prepared {
        message,
        scan,
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(p: &Prepared) -> Vec<&'static str> {
        p.findings.iter().map(|f| f.code).collect()
    }

    const FIX_ALL: FixOptions<'static> = FixOptions {
        smtputf8: false,
        message_id: Some("<q1@gw.example>"),
        date: Some("Mon, 23 Nov 2026 10:00:00 +0000"),
    };

    #[test]
    fn clean_message_has_no_findings_and_is_untouched() {
        let raw = b"From: a@example.com\r\nTo: b@example.org\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <x@example.com>\r\nSubject: hi\r\n\r\nbody\r\n";
        let p = prepare(raw, &FIX_ALL);
        assert!(p.findings.is_empty(), "{:?}", p.findings);
        assert_eq!(p.message.raw(), raw);
    }

    #[test]
    fn missing_headers_are_added_and_line_endings_fixed() {
        let raw = b"From: a@example.com\nContent-Type: text/plain\n\nbody\n";
        let p = prepare(raw, &FIX_ALL);
        assert_eq!(
            codes(&p),
            [
                "bare-line-endings",
                "missing-date",
                "missing-message-id",
                "missing-mime-version"
            ]
        );
        assert!(p.findings.iter().all(|f| f.fixed));
        let text = String::from_utf8(p.message.raw().to_vec()).unwrap();
        assert!(text.starts_with("Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <q1@gw.example>\r\nMIME-Version: 1.0\r\nFrom:"));
        assert!(text.ends_with("\r\n\r\nbody\r\n"));
        assert_eq!(p.message.message_id(), Some("q1@gw.example"));
        assert_eq!(p.scan.size, text.len());
        assert_eq!(&text[p.scan.body_offset.unwrap()..], "body\r\n");
        // Re-linting the fixed message finds only what the scan recorded of the input.
        let again: Vec<_> = lint(&p.message, &p.scan, false)
            .iter()
            .map(|f| f.code)
            .collect();
        assert_eq!(again, ["bare-line-endings"]);
    }

    #[test]
    fn without_fix_values_findings_are_reported_not_fixed() {
        let p = prepare(b"From: a@example.com\r\n\r\nx\r\n", &FixOptions::default());
        assert_eq!(codes(&p), ["missing-date", "missing-message-id"]);
        assert!(p.findings.iter().all(|f| !f.fixed));
    }

    #[test]
    fn reports_what_it_cannot_fix() {
        let long = "x".repeat(1200);
        let raw = format!(
            "From: a@example.com\r\nFrom: b@example.com\r\nSubject: é\r\nSubject: again\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\nMIME-Version: 1.0\r\n\r\n{long}\r\ncafé\0\r\n"
        );
        let p = prepare(raw.as_bytes(), &FIX_ALL);
        assert_eq!(
            codes(&p),
            [
                "multiple-from",
                "duplicate-header",
                "long-lines",
                "undeclared-8bit",
                "non-ascii-header",
                "nul-byte"
            ]
        );
        assert_eq!(p.findings[1].detail, "Subject");
        assert!(p.findings.iter().all(|f| !f.fixed));
        let with_utf8 = FixOptions {
            smtputf8: true,
            ..FIX_ALL
        };
        assert!(!codes(&prepare(raw.as_bytes(), &with_utf8)).contains(&"non-ascii-header"));
    }

    #[test]
    fn declared_8bit_part_is_fine_and_one_from_with_two_mailboxes_is_not() {
        let raw = "From: a@example.com, b@example.com\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncafé\r\n";
        let p = prepare(raw.as_bytes(), &FIX_ALL);
        assert_eq!(codes(&p), ["multiple-from"]);
    }

    #[test]
    fn every_code_is_listed() {
        let raw = b"Subject: x\n\n\xff\0\n";
        for f in prepare(raw, &FixOptions::default()).findings {
            assert!(FINDING_CODES.contains(&f.code), "{}", f.code);
        }
    }
}

//! One pass over a message received in DATA: line-ending normalisation and the
//! facts the gateway needs before it spools (bare CR/LF, 8-bit content, line
//! lengths, where the header section ends).
//!
//! SMTP requires CRLF line endings. Bare CR or LF inside DATA is what SMTP
//! smuggling exploits, and many receivers reject it, so the gateway rewrites
//! every bare CR and bare LF to CRLF and reports how many it found.

use std::borrow::Cow;

/// RFC 5322 §2.1.1: a line must not exceed 998 octets, excluding CRLF.
pub const MAX_LINE_OCTETS: usize = 998;

/// What one scan found, measured on the normalised message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageScan {
    /// Size in octets after normalisation.
    pub size: usize,
    /// Number of lines (a final line without CRLF counts).
    pub lines: usize,
    /// Bare LF characters (not preceded by CR) that were rewritten to CRLF.
    pub bare_lf: usize,
    /// Bare CR characters (not followed by LF) that were rewritten to CRLF.
    pub bare_cr: usize,
    /// Length of the longest line, excluding its CRLF.
    pub longest_line: usize,
    /// Lines longer than [`MAX_LINE_OCTETS`].
    pub long_lines: usize,
    /// Whether any octet has the high bit set.
    pub has_8bit: bool,
    /// Whether any header octet has the high bit set (needs SMTPUTF8 downstream).
    pub header_8bit: bool,
    /// Whether a NUL octet occurs anywhere.
    pub has_nul: bool,
    /// Offset of the first body octet (just after the blank line), or `None`
    /// when the message has no blank line ending the header section.
    pub body_offset: Option<usize>,
}

/// Normalise line endings to CRLF and measure the message in one pass.
///
/// Borrows the input when it is already canonical, which is the common case,
/// so a clean message is never copied.
pub fn scan_and_normalize(data: &[u8]) -> (Cow<'_, [u8]>, MessageScan) {
    let mut scan = MessageScan::default();
    let needs_rewrite = has_bare_line_ending(data);
    let out: Cow<'_, [u8]> = if needs_rewrite {
        Cow::Owned(rewrite_line_endings(data, &mut scan))
    } else {
        Cow::Borrowed(data)
    };
    measure(&out, &mut scan);
    (out, scan)
}

fn has_bare_line_ending(data: &[u8]) -> bool {
    // Every CR must be followed by LF and every LF preceded by CR.
    for pos in memchr::memchr2_iter(b'\r', b'\n', data) {
        match data[pos] {
            b'\r' if data.get(pos + 1) != Some(&b'\n') => return true,
            b'\n' if pos == 0 || data[pos - 1] != b'\r' => return true,
            _ => {}
        }
    }
    false
}

fn rewrite_line_endings(data: &[u8], scan: &mut MessageScan) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32 + 2);
    let mut start = 0;
    let mut iter = memchr::memchr2_iter(b'\r', b'\n', data).peekable();
    while let Some(pos) = iter.next() {
        out.extend_from_slice(&data[start..pos]);
        if data[pos] == b'\r' {
            if data.get(pos + 1) == Some(&b'\n') {
                iter.next(); // consume the LF of this CRLF
                start = pos + 2;
            } else {
                scan.bare_cr += 1;
                start = pos + 1;
            }
        } else {
            scan.bare_lf += 1;
            start = pos + 1;
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&data[start..]);
    out
}

fn measure(data: &[u8], scan: &mut MessageScan) {
    scan.size = data.len();
    let mut line_start = 0;
    let mut in_header = true;
    for pos in memchr::memmem::find_iter(data, b"\r\n") {
        let line = &data[line_start..pos];
        account_line(line, in_header, scan);
        if in_header && line.is_empty() {
            in_header = false;
            scan.body_offset = Some(pos + 2);
        }
        line_start = pos + 2;
    }
    if line_start < data.len() {
        account_line(&data[line_start..], in_header, scan);
    }
}

fn account_line(line: &[u8], in_header: bool, scan: &mut MessageScan) {
    scan.lines += 1;
    scan.longest_line = scan.longest_line.max(line.len());
    if line.len() > MAX_LINE_OCTETS {
        scan.long_lines += 1;
    }
    let high = line.iter().any(|&b| b >= 0x80);
    scan.has_8bit |= high;
    scan.header_8bit |= high && in_header;
    scan.has_nul |= memchr::memchr(0, line).is_some();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_message_is_borrowed_and_measured() {
        let msg = b"Subject: hi\r\nFrom: a@b\r\n\r\nbody line\r\n";
        let (out, scan) = scan_and_normalize(msg);
        assert!(matches!(out, Cow::Borrowed(_)));
        assert_eq!(scan.size, msg.len());
        assert_eq!(scan.lines, 4);
        assert_eq!(scan.bare_lf + scan.bare_cr, 0);
        assert_eq!(scan.body_offset, Some(26));
        assert!(!scan.has_8bit);
    }

    #[test]
    fn bare_lf_and_cr_become_crlf() {
        let (out, scan) = scan_and_normalize(b"A: 1\nB: 2\r\rbody\r\n");
        assert_eq!(&*out, b"A: 1\r\nB: 2\r\n\r\nbody\r\n");
        assert_eq!(scan.bare_lf, 1);
        assert_eq!(scan.bare_cr, 2);
        assert_eq!(scan.body_offset, Some(14));
    }

    #[test]
    fn smuggling_sequence_is_neutralised() {
        // "\n.\n" would end DATA on a lax receiver; after rewriting it is a
        // normal "." line which the outbound client dot-stuffs.
        let (out, scan) = scan_and_normalize(b"X: y\r\n\r\nhello\n.\nMAIL FROM:<x>\r\n");
        assert_eq!(&*out, b"X: y\r\n\r\nhello\r\n.\r\nMAIL FROM:<x>\r\n");
        assert_eq!(scan.bare_lf, 2);
    }

    #[test]
    fn eight_bit_and_long_lines_are_reported() {
        let mut msg = b"Subject: caf\xc3\xa9\r\n\r\n".to_vec();
        msg.extend(std::iter::repeat_n(b'x', 1000));
        msg.extend_from_slice(b"\r\n");
        let (_, scan) = scan_and_normalize(&msg);
        assert!(scan.has_8bit);
        assert!(scan.header_8bit);
        assert_eq!(scan.long_lines, 1);
        assert_eq!(scan.longest_line, 1000);
    }

    #[test]
    fn headers_only_message_has_no_body_offset() {
        let (_, scan) = scan_and_normalize(b"Subject: x\r\nTo: y");
        assert_eq!(scan.body_offset, None);
        assert_eq!(scan.lines, 2);
    }

    #[test]
    fn nul_is_reported_and_empty_input_is_fine() {
        let (_, scan) = scan_and_normalize(b"A: b\r\n\r\n\0\r\n");
        assert!(scan.has_nul);
        let (out, scan) = scan_and_normalize(b"");
        assert!(out.is_empty());
        assert_eq!(scan, MessageScan::default());
    }
}

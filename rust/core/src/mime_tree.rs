//! The MIME structure of a message, found without decoding any body.
//!
//! Each part's header block is parsed by `mail-parser`; multipart bodies are
//! split by searching for the boundary delimiter (RFC 2046 §5.1.1) with
//! `memchr::memmem`. Bodies stay as ranges of the raw message and are decoded
//! only when asked for, so a 1 MB attachment costs a boundary search, not a
//! base64 decode. Depth and part count are capped against hostile input.

use mail_parser::{Message, MessageParser, MimeHeaders};
use std::ops::Range;

/// Multiparts nested deeper than this are treated as opaque leaves.
pub const MAX_DEPTH: usize = 32;
/// Parts beyond this many are not split out (the rest stays in its parent).
pub const MAX_PARTS: usize = 10_000;

/// One node of the tree; node 0 is the message itself.
pub struct MimeNode<'a> {
    /// This part's header block, parsed (header-only: bodies are not touched).
    pub headers: Option<Message<'a>>,
    /// The body as transmitted: still transfer-encoded.
    pub body: Range<usize>,
    pub children: Vec<usize>,
    /// `type/subtype`, lower-cased, defaulted per RFC 2046 when absent.
    pub content_type: String,
}

impl MimeNode<'_> {
    pub fn part(&self) -> Option<&mail_parser::MessagePart<'_>> {
        self.headers.as_ref().and_then(|m| m.parts.first())
    }
}

/// Where the body starts: just after the first empty line at or after
/// `start`, or `end` when the header block never ends.
pub fn body_start(raw: &[u8], start: usize, end: usize) -> usize {
    let mut pos = start;
    while pos < end {
        let rest = &raw[pos..end];
        if rest.starts_with(b"\r\n") {
            return pos + 2;
        }
        if rest.starts_with(b"\n") {
            return pos + 1;
        }
        match memchr::memchr(b'\n', rest) {
            Some(i) => pos += i + 1,
            None => return end,
        }
    }
    end
}

/// Build the tree of `raw`.
pub fn build<'a>(raw: &'a [u8], parser: &MessageParser) -> Vec<MimeNode<'a>> {
    let mut nodes = Vec::new();
    add_node(raw, 0..raw.len(), "text/plain", 0, parser, &mut nodes);
    nodes
}

fn add_node<'a>(
    raw: &'a [u8],
    span: Range<usize>,
    default_type: &str,
    depth: usize,
    parser: &MessageParser,
    nodes: &mut Vec<MimeNode<'a>>,
) -> usize {
    let body = body_start(raw, span.start, span.end);
    let headers = parser.parse_headers(&raw[span.start..body]);
    let content_type = headers
        .as_ref()
        .and_then(|m| m.parts.first())
        .and_then(|p| p.content_type())
        .map(|ct| match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub).to_ascii_lowercase(),
            None => ct.ctype().to_ascii_lowercase(),
        })
        .unwrap_or_else(|| default_type.to_owned());
    let boundary = headers
        .as_ref()
        .and_then(|m| m.parts.first())
        .and_then(|p| p.content_type())
        .and_then(|ct| ct.attribute("boundary"))
        .map(|b| b.as_bytes().to_vec());
    let id = nodes.len();
    nodes.push(MimeNode {
        headers,
        body: body..span.end,
        children: Vec::new(),
        content_type,
    });
    if !nodes[id].content_type.starts_with("multipart/") || depth >= MAX_DEPTH {
        return id;
    }
    let Some(boundary) = boundary.filter(|b| !b.is_empty()) else {
        return id;
    };
    let child_default = if nodes[id].content_type == "multipart/digest" {
        "message/rfc822"
    } else {
        "text/plain"
    };
    let mut children = Vec::new();
    for segment in split_parts(raw, body..span.end, &boundary) {
        if nodes.len() >= MAX_PARTS {
            break;
        }
        children.push(add_node(
            raw,
            segment,
            child_default,
            depth + 1,
            parser,
            nodes,
        ));
    }
    nodes[id].children = children;
    id
}

/// The body parts of a multipart: the ranges between delimiter lines
/// (`--boundary` at the start of a line), up to the close delimiter. The line
/// break before a delimiter belongs to the delimiter. Text before the first
/// delimiter (the preamble) and after the last (the epilogue) is skipped.
fn split_parts(raw: &[u8], body: Range<usize>, boundary: &[u8]) -> Vec<Range<usize>> {
    let mut delimiter = Vec::with_capacity(boundary.len() + 2);
    delimiter.extend_from_slice(b"--");
    delimiter.extend_from_slice(boundary);
    let finder = memchr::memmem::Finder::new(&delimiter);
    let mut parts = Vec::new();
    let mut current: Option<usize> = None;
    let mut pos = body.start;
    while pos < body.end {
        let Some(found) = finder.find(&raw[pos..body.end]) else {
            break;
        };
        let at = pos + found;
        let after = at + delimiter.len();
        if at != body.start && raw[at - 1] != b'\n' {
            pos = at + 1; // not at the start of a line: part of the content
            continue;
        }
        let closing = raw[after..body.end].starts_with(b"--");
        let next_line =
            memchr::memchr(b'\n', &raw[after..body.end]).map_or(body.end, |i| after + i + 1);
        let padding = &raw[after + if closing { 2 } else { 0 }..next_line];
        if !padding
            .iter()
            .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            pos = at + 1; // "--boundaryX": a longer line, not a delimiter
            continue;
        }
        if let Some(start) = current.take() {
            let mut end = at;
            if end > start && raw[end - 1] == b'\n' {
                end -= 1;
                if end > start && raw[end - 1] == b'\r' {
                    end -= 1;
                }
            }
            parts.push(start..end.max(start));
        }
        if closing {
            return parts;
        }
        current = Some(next_line);
        pos = next_line;
    }
    if let Some(start) = current {
        parts.push(start..body.end); // no close delimiter: the last part runs to the end
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges<'a>(raw: &'a [u8], boundary: &str) -> Vec<&'a str> {
        split_parts(raw, 0..raw.len(), boundary.as_bytes())
            .into_iter()
            .map(|r| std::str::from_utf8(&raw[r]).unwrap())
            .collect()
    }

    #[test]
    fn splits_on_delimiter_lines_only() {
        let body =
            b"preamble\r\n--b\r\nA\r\n--bx not a delimiter\r\n--b \r\nB\r\n--b--\r\nepilogue\r\n";
        assert_eq!(ranges(body, "b"), ["A\r\n--bx not a delimiter", "B"]);
        assert_eq!(ranges(b"--b\r\nonly\r\n", "b"), ["only\r\n"]);
        assert!(ranges(b"no delimiters at all", "b").is_empty());
        assert_eq!(ranges(b"--b\r\n\r\n--b--", "b"), [""]);
    }

    #[test]
    fn body_start_finds_the_blank_line() {
        assert_eq!(body_start(b"A: 1\r\nB: 2\r\n\r\nbody", 0, 17), 14);
        assert_eq!(body_start(b"A: 1\nB: 2\n\nbody", 0, 15), 11);
        assert_eq!(body_start(b"A: 1\r\n", 0, 6), 6);
        assert_eq!(body_start(b"\r\nbody", 0, 6), 2);
    }
}

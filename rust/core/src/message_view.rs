//! A parsed, read-only view of a message: headers, addresses, identifiers and
//! the MIME part tree, built on the `mail-parser` crate.
//!
//! The view owns the message bytes once and everything else borrows from them
//! (`self_cell`), so header values are zero-copy and bodies are decoded only
//! when asked for (see `mime_tree`). `mail-parser` never panics on malformed
//! input and makes a best effort, which is what a relay needs: it must
//! describe whatever a client sent, not judge it.

use crate::mime_tree::{self, MimeNode};
use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;
use mail_parser::parsers::MessageStream;
use mail_parser::{HeaderName, HeaderValue, Message, MessageParser, MimeHeaders};
use self_cell::self_cell;
use std::borrow::Cow;
use std::sync::OnceLock;

self_cell!(
    struct OwnedMessage {
        owner: Vec<u8>,
        #[covariant]
        dependent: Parsed,
    }
);

/// The MIME tree of the owned bytes; node 0 is the message and its headers.
/// (Header blocks are parsed one at a time: mail-parser 0.11's whole-message
/// parse can give the root a nested part's headers on a malformed multipart,
/// which fuzzing found.)
struct Parsed<'a> {
    nodes: Vec<MimeNode<'a>>,
}

fn parser() -> &'static MessageParser {
    static PARSER: OnceLock<MessageParser> = OnceLock::new();
    PARSER.get_or_init(|| {
        MessageParser::new()
            .with_mime_headers()
            .with_date_headers()
            .with_address_headers()
            .with_message_ids()
            .header_text(HeaderName::Subject)
    })
}

/// The address headers a view can return parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressField {
    From,
    Sender,
    ReplyTo,
    To,
    Cc,
}

impl AddressField {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "from" => Self::From,
            "sender" => Self::Sender,
            "reply-to" => Self::ReplyTo,
            "to" => Self::To,
            "cc" => Self::Cc,
            _ => return None,
        })
    }

    fn header_name(self) -> HeaderName<'static> {
        match self {
            Self::From => HeaderName::From,
            Self::Sender => HeaderName::Sender,
            Self::ReplyTo => HeaderName::ReplyTo,
            Self::To => HeaderName::To,
            Self::Cc => HeaderName::Cc,
        }
    }
}

/// One mailbox from an address header; group members are flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: Option<String>,
}

impl Mailbox {
    /// The domain of the address, lower-cased, if it has one.
    pub fn domain(&self) -> Option<String> {
        let address = self.address.as_deref()?;
        let (_, domain) = address.rsplit_once('@')?;
        (!domain.is_empty()).then(|| domain.trim_end_matches('.').to_ascii_lowercase())
    }
}

/// One header field as it appears in the message.
#[derive(Debug, Clone, Copy)]
pub struct HeaderField<'a> {
    pub name: &'a str,
    /// The value exactly as sent: after the colon, folding kept, without the final CRLF.
    pub raw_value: &'a [u8],
}

impl HeaderField<'_> {
    /// The value unfolded, with RFC 2047 encoded words decoded and surrounding space trimmed.
    pub fn decoded(&self) -> String {
        let mut line = self.raw_value.to_vec();
        line.extend_from_slice(b"\r\n");
        match MessageStream::new(&line).parse_unstructured() {
            HeaderValue::Text(text) => text.into_owned(),
            _ => String::new(),
        }
    }
}

/// What kind of body a MIME part has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    Text,
    Html,
    Binary,
    Message,
    Multipart,
}

impl PartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Html => "html",
            Self::Binary => "binary",
            Self::Message => "message",
            Self::Multipart => "multipart",
        }
    }
}

/// One node of the MIME tree. Parts are numbered depth-first; 0 is the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub id: usize,
    pub kind: PartKind,
    /// `type/subtype`, lower-cased; `text/plain` when the part declares none.
    pub content_type: String,
    pub charset: Option<String>,
    pub disposition: Option<String>,
    pub filename: Option<String>,
    pub transfer_encoding: Option<String>,
    /// Size of the body as transmitted (still transfer-encoded), in octets.
    pub size: usize,
    /// Ids of the child parts of a multipart.
    pub children: Vec<usize>,
}

/// A parsed message that owns its bytes.
pub struct ParsedMessage {
    inner: OwnedMessage,
}

impl std::fmt::Debug for ParsedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedMessage")
            .field("size", &self.raw().len())
            .finish()
    }
}

impl ParsedMessage {
    /// Parse a whole message, bodies included.
    pub fn parse(data: Vec<u8>) -> Self {
        Self {
            inner: OwnedMessage::new(data, |raw| Parsed {
                nodes: mime_tree::build(raw, parser()),
            }),
        }
    }

    pub fn raw(&self) -> &[u8] {
        self.inner.borrow_owner()
    }

    /// The top-level headers.
    fn message(&self) -> Option<&Message<'_>> {
        self.nodes().first()?.headers.as_ref()
    }

    fn nodes(&self) -> &[MimeNode<'_>] {
        &self.inner.borrow_dependent().nodes
    }

    /// Every top-level header field, in order.
    pub fn headers(&self) -> Vec<HeaderField<'_>> {
        let Some(message) = self.message() else {
            return Vec::new();
        };
        let raw = self.raw();
        message.parts[0]
            .headers
            .iter()
            .map(|h| {
                let start = (h.offset_start as usize).min(raw.len());
                let end = (h.offset_end as usize).clamp(start, raw.len());
                let value = &raw[start..end];
                let value = value.strip_suffix(b"\r\n").unwrap_or(value);
                HeaderField {
                    name: h.name.as_str(),
                    raw_value: value,
                }
            })
            .collect()
    }

    /// The top-level header fields with this name (case-insensitive), in order.
    pub fn fields_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = HeaderField<'a>> {
        self.headers()
            .into_iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    }

    /// How many top-level header fields have this name (case-insensitive).
    pub fn header_count(&self, name: &str) -> usize {
        self.fields_named(name).count()
    }

    /// All mailboxes in every occurrence of an address header.
    pub fn addresses(&self, field: AddressField) -> Vec<Mailbox> {
        let Some(message) = self.message() else {
            return Vec::new();
        };
        message
            .header_values(field.header_name())
            .filter_map(HeaderValue::as_address)
            .flat_map(|address| address.iter())
            .map(|a| Mailbox {
                name: a.name().map(str::to_owned),
                address: a.address().map(str::to_owned),
            })
            .collect()
    }

    /// Domains of the From mailboxes, lower-cased, without duplicates.
    pub fn author_domains(&self) -> Vec<String> {
        let mut domains: Vec<String> = Vec::new();
        for domain in self
            .addresses(AddressField::From)
            .iter()
            .filter_map(Mailbox::domain)
        {
            if !domains.contains(&domain) {
                domains.push(domain);
            }
        }
        domains
    }

    /// The Message-ID without angle brackets.
    pub fn message_id(&self) -> Option<&str> {
        self.message()?.message_id()
    }

    pub fn subject(&self) -> Option<&str> {
        self.message()?.subject()
    }

    /// The Date header as a Unix timestamp, when it parses as a valid date.
    pub fn date(&self) -> Option<i64> {
        let date = self.message()?.date()?;
        date.is_valid().then(|| date.to_timestamp())
    }

    /// The MIME part tree, flattened depth-first (a nested message is one part).
    pub fn parts(&self) -> Vec<PartInfo> {
        let raw_len = self.raw().len();
        self.nodes()
            .iter()
            .enumerate()
            .map(|(id, node)| {
                let part = node.part();
                let content_type = part.and_then(|p| p.content_type());
                let kind = match node.content_type.as_str() {
                    t if t.starts_with("multipart/") => PartKind::Multipart,
                    "message/rfc822" | "message/global" => PartKind::Message,
                    "text/html" => PartKind::Html,
                    t if t.starts_with("text/") => PartKind::Text,
                    _ => PartKind::Binary,
                };
                PartInfo {
                    id,
                    kind,
                    content_type: node.content_type.clone(),
                    charset: content_type
                        .and_then(|ct| ct.attribute("charset"))
                        .map(|c| c.to_ascii_lowercase()),
                    disposition: part
                        .and_then(|p| p.content_disposition())
                        .map(|d| d.ctype().to_ascii_lowercase()),
                    filename: part.and_then(|p| p.attachment_name()).map(str::to_owned),
                    transfer_encoding: part
                        .and_then(|p| p.content_transfer_encoding())
                        .map(|e| e.trim().to_ascii_lowercase()),
                    size: node.body.end.min(raw_len) - node.body.start.min(raw_len),
                    children: node.children.clone(),
                }
            })
            .collect()
    }

    /// The decoded body of a leaf part (transfer encoding undone); `None` for
    /// multiparts, unknown ids, and bodies that fail to decode.
    pub fn part_bytes(&self, id: usize) -> Option<Cow<'_, [u8]>> {
        let node = self.nodes().get(id)?;
        if !node.children.is_empty() || node.content_type.starts_with("multipart/") {
            return None;
        }
        let body = self.part_raw_body(id)?;
        let encoding = node
            .part()
            .and_then(|p| p.content_transfer_encoding())
            .map(|e| e.trim().to_ascii_lowercase());
        match encoding.as_deref() {
            Some("base64") => base64_decode(body).map(Cow::Owned),
            Some("quoted-printable") => quoted_printable_decode(body).map(Cow::Owned),
            _ => Some(Cow::Borrowed(body)),
        }
    }

    /// The decoded text of a text part, converted to UTF-8 from its charset
    /// (invalid sequences replaced); `None` for non-text parts.
    pub fn part_text(&self, id: usize) -> Option<Cow<'_, str>> {
        let node = self.nodes().get(id)?;
        if !node.content_type.starts_with("text/") {
            return None;
        }
        let bytes = self.part_bytes(id)?;
        let charset = node
            .part()
            .and_then(|p| p.content_type())
            .and_then(|ct| ct.attribute("charset"))
            .unwrap_or("us-ascii");
        let is_utf8 = matches!(
            charset.to_ascii_lowercase().as_str(),
            "utf-8" | "utf8" | "us-ascii" | "ascii"
        );
        if !is_utf8 {
            if let Some(decode) = charset_decoder(charset.as_bytes()) {
                return Some(Cow::Owned(decode(&bytes)));
            }
        }
        Some(match bytes {
            Cow::Borrowed(b) => String::from_utf8_lossy(b),
            Cow::Owned(v) => Cow::Owned(String::from_utf8_lossy(&v).into_owned()),
        })
    }

    /// The transmitted (still encoded) body of a part, for 8-bit checks.
    pub fn part_raw_body(&self, id: usize) -> Option<&[u8]> {
        let node = self.nodes().get(id)?;
        self.raw().get(node.body.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEWSLETTER: &[u8] = b"From: \"News\" <news@Example.COM>\r\n\
To: a@example.org, Group: b@example.org, c@example.org;\r\n\
Subject: =?utf-8?q?Caf=C3=A9?= news\r\n\
Message-ID: <abc@example.com>\r\n\
Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain; charset=iso-8859-1\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
Caf=E9\r\n\
--b1\r\n\
Content-Type: application/pdf; name=\"r.pdf\"\r\n\
Content-Disposition: attachment; filename=\"report.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
aGVsbG8=\r\n\
--b1--\r\n";

    #[test]
    fn headers_keep_raw_and_decode_encoded_words() {
        let m = ParsedMessage::parse(NEWSLETTER.to_vec());
        let headers = m.headers();
        let subject = headers.iter().find(|h| h.name == "Subject").unwrap();
        assert_eq!(subject.raw_value, b" =?utf-8?q?Caf=C3=A9?= news");
        assert_eq!(subject.decoded(), "Café news");
        assert_eq!(m.subject(), Some("Café news"));
        assert_eq!(m.header_count("from"), 1);
    }

    #[test]
    fn addresses_flatten_groups_and_domains_are_lowercase() {
        let m = ParsedMessage::parse(NEWSLETTER.to_vec());
        let to: Vec<_> = m
            .addresses(AddressField::To)
            .into_iter()
            .filter_map(|a| a.address)
            .collect();
        assert_eq!(to, ["a@example.org", "b@example.org", "c@example.org"]);
        assert_eq!(m.author_domains(), ["example.com"]);
        assert_eq!(m.message_id(), Some("abc@example.com"));
        assert_eq!(m.date(), Some(1_795_428_000));
    }

    #[test]
    fn part_tree_and_decoded_bodies() {
        let m = ParsedMessage::parse(NEWSLETTER.to_vec());
        let parts = m.parts();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].kind, PartKind::Multipart);
        assert_eq!(parts[0].children, [1, 2]);
        assert_eq!(parts[1].charset.as_deref(), Some("iso-8859-1"));
        assert_eq!(m.part_text(1).as_deref(), Some("Café"));
        assert_eq!(parts[2].content_type, "application/pdf");
        assert_eq!(parts[2].filename.as_deref(), Some("report.pdf"));
        assert_eq!(parts[2].disposition.as_deref(), Some("attachment"));
        assert_eq!(m.part_bytes(2).as_deref(), Some(&b"hello"[..]));
        assert_eq!(parts[2].size, 8); // as transmitted: "aGVsbG8="
    }

    #[test]
    fn garbage_and_empty_input_give_an_empty_view() {
        for input in [&b""[..], b"\r\n\r\n", b"\xff\xfe\x00garbage"] {
            let m = ParsedMessage::parse(input.to_vec());
            let _ = (m.headers(), m.parts(), m.author_domains(), m.subject());
        }
    }
}

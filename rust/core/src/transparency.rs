//! SMTP data transparency (RFC 5321 §4.5.2) for the outbound client: a line
//! that starts with "." gets another "." and the data ends with
//! CRLF "." CRLF. The input is a spooled message, already CRLF-normalised.

/// The bytes to write after DATA's 354: dot-stuffed, CRLF-terminated, with
/// the end-of-data marker appended.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let extra = memchr::memmem::find_iter(data, b"\r\n.").count() + 6;
    let mut out = Vec::with_capacity(data.len() + extra);
    if data.first() == Some(&b'.') {
        out.push(b'.');
    }
    let mut start = 0;
    for pos in memchr::memmem::find_iter(data, b"\r\n.") {
        out.extend_from_slice(&data[start..pos + 2]);
        out.push(b'.');
        start = pos + 2;
    }
    out.extend_from_slice(&data[start..]);
    if !out.ends_with(b"\r\n") && !out.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_dots_are_doubled() {
        assert_eq!(
            dot_stuff(b".a\r\nb\r\n..c\r\n"),
            b"..a\r\nb\r\n...c\r\n.\r\n"
        );
    }

    #[test]
    fn lone_dot_line_cannot_end_data_early() {
        assert_eq!(dot_stuff(b"x\r\n.\r\ny\r\n"), b"x\r\n..\r\ny\r\n.\r\n");
    }

    #[test]
    fn missing_final_crlf_is_added() {
        assert_eq!(dot_stuff(b"x"), b"x\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }
}

"""Bounce and complaint reports as remote systems write them, for the tests.

Written after the RFCs' own examples (RFC 3464 appendix, RFC 5965 section
5) and after what qmail and Exim send; each builder takes the original
message as the receiving MX got it, so the report carries its headers.
"""

from __future__ import annotations


def _headers(original: bytes) -> bytes:
    return original.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def rfc3464(original: bytes, rcpt: str, status: str = "5.1.1", full: bool = False) -> bytes:
    """A multipart/report DSN; the original as headers only, or whole (`full`)."""
    returned = (
        b"Content-Type: message/rfc822\r\n\r\n" + original
        if full
        else b"Content-Type: text/rfc822-headers\r\n\r\n" + _headers(original)
    )
    return (
        b"From: Mail Delivery Subsystem <MAILER-DAEMON@mx.good.test>\r\n"
        b"To: <bounces@bounces.sender.test>\r\n"
        b"Subject: Returned mail: see transcript for details\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status;\r\n"
        b'\tboundary="RAA14128.773615765/CS.UTK.EDU"\r\n'
        b"\r\n"
        b"--RAA14128.773615765/CS.UTK.EDU\r\n"
        b"Content-Type: text/plain\r\n\r\n"
        b"The original message was received at Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        b"   ----- The following addresses had permanent fatal errors -----\r\n"
        b"<" + rcpt.encode() + b">\r\n\r\n"
        b"--RAA14128.773615765/CS.UTK.EDU\r\n"
        b"Content-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.good.test\r\n"
        b"Arrival-Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
        b"Original-Recipient: rfc822;" + rcpt.encode() + b"\r\n"
        b"Final-Recipient: RFC822; " + rcpt.encode() + b"\r\n"
        b"Action: failed\r\n"
        b"Status: " + status.encode() + b"\r\n"
        b"Remote-MTA: dns; mx.good.test\r\n"
        b"Diagnostic-Code: smtp; 550 " + status.encode() + b" <" + rcpt.encode() + b">:\r\n"
        b"    Recipient address rejected: User unknown in virtual mailbox table\r\n"
        b"Last-Attempt-Date: Mon, 23 Nov 2026 10:00:01 +0000\r\n\r\n"
        b"--RAA14128.773615765/CS.UTK.EDU\r\n" + returned + b"\r\n"
        b"--RAA14128.773615765/CS.UTK.EDU--\r\n"
    )


def qmail(original: bytes, rcpt: str) -> bytes:
    return (
        b"From: MAILER-DAEMON@mx.good.test\r\n"
        b"To: bounces@bounces.sender.test\r\n"
        b"Subject: failure notice\r\n\r\n"
        b"Hi. This is the qmail-send program at mx.good.test.\r\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
        b"<" + rcpt.encode() + b">:\r\n"
        b"Sorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
        b"--- Below this line is a copy of the message.\r\n\r\n" + original
    )


def exim(original: bytes, rcpt: str) -> bytes:
    return (
        b"From: Mail Delivery System <Mailer-Daemon@mx.good.test>\r\n"
        b"To: bounces@bounces.sender.test\r\n"
        b"Subject: Mail delivery failed: returning message to sender\r\n\r\n"
        b"This message was created automatically by mail delivery software.\r\n\r\n"
        b"A message that you sent could not be delivered to one or more of its\r\n"
        b"recipients. This is a permanent error. The following address(es) failed:\r\n\r\n"
        b"  " + rcpt.encode() + b"\r\n"
        b"    host mx.good.test [127.0.0.2]\r\n"
        b"    SMTP error from remote mail server after RCPT TO:<" + rcpt.encode() + b">:\r\n"
        b"    550 5.1.1 <" + rcpt.encode() + b">: Recipient address rejected\r\n\r\n"
        b"------ This is a copy of the message, including all the headers. ------\r\n\r\n"
        + original
    )


def plain(rcpt: str) -> bytes:
    """A bounce of no known format, naming nobody: only VERP can match it."""
    return (
        b"From: postmaster@mx.good.test\r\nTo: whoever\r\nSubject: Undeliverable\r\n\r\n"
        b"Delivery has failed. The server said: 550 5.1.1 mailbox unavailable\r\n"
    )


def arf(original: bytes, rcpt: str | None, mail_from: str = "") -> bytes:
    """An RFC 5965 abuse report; `rcpt` None: the recipient redacted, as most FBLs do."""
    fields = (
        b"Feedback-Type: abuse\r\n"
        b"User-Agent: SomeGenerator/1.0\r\n"
        b"Version: 1\r\n"
        + (b"Original-Mail-From: <" + mail_from.encode() + b">\r\n" if mail_from else b"")
        + (b"Original-Rcpt-To: <" + rcpt.encode() + b">\r\n" if rcpt else b"")
        + b"Arrival-Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        b"Reporting-MTA: dns; fbl.good.test\r\n"
        b"Source-IP: 127.0.0.1\r\n"
    )
    if rcpt is None:  # redact the recipient in the original too
        original = original.replace(b"ann@good.test", b"redacted@good.test")
    return (
        b"From: <abusedesk@good.test>\r\n"
        b"To: <fbl@bounces.sender.test>\r\n"
        b"Subject: FW: Earn money\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=feedback-report;\r\n"
        b'\tboundary="part1_13d.2e68ed54_boundary"\r\n\r\n'
        b"--part1_13d.2e68ed54_boundary\r\n"
        b'Content-Type: text/plain; charset="US-ASCII"\r\n\r\n'
        b"This is an email abuse report for an email message received from IP\r\n"
        b"127.0.0.1 on Mon, 23 Nov 2026 10:00:00 +0000.\r\n\r\n"
        b"--part1_13d.2e68ed54_boundary\r\n"
        b"Content-Type: message/feedback-report\r\n\r\n" + fields + b"\r\n"
        b"--part1_13d.2e68ed54_boundary\r\n"
        b"Content-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n"
        + original
        + b"\r\n--part1_13d.2e68ed54_boundary--\r\n"
    )

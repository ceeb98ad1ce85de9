"""The Rust extension seen from Python: the parsed view, lint and fix-up,
DKIM signers and their errors (signatures are checked with dkimpy), and the
spool's sync writer."""

from __future__ import annotations

import email
import email.policy
import errno
import select
import sysconfig
import time
from pathlib import Path

import dkim
import pytest

from gateway import _core
from gateway.testing.dkim import public_record, write_key

NEWSLETTER = (
    b'From: "Brand News" <news@Brand.Test>\r\n'
    b"To: a@example.org, Friends: b@example.org, c@example.org;\r\n"
    b"Cc: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\n"
    b"Subject: =?utf-8?q?Caf=C3=A9?= offers\r\n"
    b"Message-ID: <n1@brand.test>\r\n"
    b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n'
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Caf=E9\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"<p>Caf\xc3\xa9</p>\r\n"
    b"--inner--\r\n"
    b"--outer\r\n"
    b'Content-Type: application/pdf; name="r.pdf"\r\n'
    b'Content-Disposition: attachment; filename="report.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"JVBERi0xLjQK\r\n"
    b"--outer--\r\n"
)


def test_view_headers_addresses_and_identifiers() -> None:
    view = _core.parse_message(NEWSLETTER)
    assert view.size == len(NEWSLETTER)
    assert view.subject == "Café offers"
    assert view.message_id == "n1@brand.test"
    assert view.date == 1_795_428_000
    assert view.author_domains == ["brand.test"]
    assert view.addresses("From") == [("Brand News", "news@Brand.Test")]
    assert [a for _, a in view.addresses("to")] == [
        "a@example.org",
        "b@example.org",
        "c@example.org",
    ]
    assert view.addresses("Cc") == [("Jürgen", "j@example.org")]
    name, raw, decoded = view.headers()[3]
    assert (name, raw, decoded) == ("Subject", b" =?utf-8?q?Caf=C3=A9?= offers", "Café offers")
    assert view.get("subject") == "Café offers"
    assert view.get_all("X-Missing") == []
    with pytest.raises(ValueError, match="unknown address header"):
        view.addresses("Bcc")


def test_view_mime_tree_and_decoded_bodies() -> None:
    view = _core.parse_message(NEWSLETTER)
    parts = view.parts()
    types = [p.content_type for p in parts]
    assert types == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "application/pdf",
    ]
    assert parts[0].children == [1, 4]
    assert parts[1].children == [2, 3]
    assert view.part_text(2) == "Café"  # iso-8859-1 quoted-printable, decoded
    assert view.part_text(3) == "<p>Café</p>"
    pdf = parts[4]
    assert (pdf.filename, pdf.disposition, pdf.transfer_encoding) == (
        "report.pdf",
        "attachment",
        "base64",
    )
    assert view.part_bytes(4) == b"%PDF-1.4\n"
    assert pdf.size == len(b"JVBERi0xLjQK")  # as transmitted
    assert view.part_bytes(0) is None
    assert view.part_text(99) is None


def test_views_agree_with_python_email_on_cpython_corpus() -> None:
    """Every message of CPython's email test data parses; subjects agree."""
    data_dir = Path(sysconfig.get_path("stdlib")) / "test" / "test_email" / "data"
    files = sorted(data_dir.glob("msg_*.txt"))
    if not files:
        pytest.skip("this Python has no test.test_email data")
    agreed = 0
    for path in files:
        raw = path.read_bytes()
        view = _core.parse_message(raw)
        theirs = email.message_from_bytes(raw, policy=email.policy.default)
        subject = theirs["subject"]
        if subject is not None and view.subject is not None:
            agreed += " ".join(str(subject).split()) == " ".join(view.subject.split())
        view.parts()
    assert agreed >= len(files) // 2


def test_prepare_fixes_and_reports() -> None:
    raw = b"From: a@brand.test\nFrom: b@brand.test\nContent-Type: text/plain\n\ncaf\xc3\xa9\n"
    prepared = _core.prepare_message(
        raw, message_id="<q@gw.test>", date="Mon, 23 Nov 2026 10:00:00 +0000"
    )
    found = {f.code: f.fixed for f in prepared.findings}
    assert found == {
        "bare-line-endings": True,
        "missing-date": True,
        "missing-message-id": True,
        "missing-mime-version": True,
        "multiple-from": False,
        "undeclared-8bit": False,
    }
    assert prepared.data.startswith(b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n")
    assert b"\n" not in prepared.data.replace(b"\r\n", b"")
    assert prepared.view.message_id == "q@gw.test"
    assert prepared.scan.size == len(prepared.data)
    assert set(found) <= set(_core.LINT_CODES)


def test_prepare_leaves_a_clean_message_alone() -> None:
    prepared = _core.prepare_message(NEWSLETTER, message_id="<x@y>", date="now")
    assert prepared.findings == []
    assert prepared.data is NEWSLETTER or prepared.data == NEWSLETTER


@pytest.mark.parametrize("kind", ["rsa2048", "rsa3072", "ed25519"])
def test_signer_output_verifies_with_dkimpy(tmp_path: Path, kind: str) -> None:
    key = write_key(tmp_path / "k.pem", kind)
    signer = _core.DkimSigner(key.read_bytes(), "Brand.Test", "sel")
    assert signer.domain == "brand.test"
    assert signer.dns_record() == public_record(key)
    signed = _core.sign_message(NEWSLETTER, [signer])
    assert signed.endswith(NEWSLETTER)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"sel._domainkey.brand.test."
        return public_record(key).encode()

    assert dkim.verify(signed, dnsfunc=dns)
    assert not dkim.verify(signed.replace(b"Caf=E9", b"Cafe"), dnsfunc=dns)


def test_signer_errors_are_clear(tmp_path: Path) -> None:
    small = write_key(tmp_path / "small.pem", "rsa1024")
    with pytest.raises(_core.DkimKeyError, match="smaller than 2048 bits"):
        _core.DkimSigner(small.read_bytes(), "brand.test", "s")
    with pytest.raises(_core.DkimKeyError, match="not a PEM private key"):
        _core.DkimSigner(b"-----BEGIN NOTHING-----", "brand.test", "s")
    good = write_key(tmp_path / "good.pem", "ed25519").read_bytes()
    with pytest.raises(_core.DkimKeyError, match="invalid DKIM selector"):
        _core.DkimSigner(good, "brand.test", "bad selector")
    with pytest.raises(_core.DkimKeyError, match="unknown canonicalization"):
        _core.DkimSigner(good, "brand.test", "s", header_canonicalization="loose")
    signer = _core.DkimSigner(good, "brand.test", "s", headers=["Subject"])
    assert signer.headers == [
        "Subject",
        "From",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "From",
    ]
    with pytest.raises(_core.DkimSignError, match="no From header"):
        signer.sign(b"X-Other: 1\r\n\r\nbody\r\n")
    assert issubclass(_core.CoreError, RuntimeError)


def _completed(writer: _core.SyncWriter, count: int) -> list[tuple[int, int]]:
    """The next `count` results, waiting for the writer's socket as a loop would."""
    done: list[tuple[int, int]] = []
    deadline = time.monotonic() + 5
    while len(done) < count and time.monotonic() < deadline:
        select.select([writer.fileno()], [], [], 0.5)
        done += writer.completed()
    return done


def test_the_sync_writer_appends_in_order_and_reports_errors(tmp_path: Path) -> None:
    segment = tmp_path / "a.seg"
    segment.write_bytes(b"head:")
    writer = _core.SyncWriter()
    writer.submit(1, str(segment), b"one,", str(tmp_path))
    writer.submit(2, str(segment), b"two")
    writer.submit(3, str(tmp_path / "missing.seg"), b"lost")  # appends, never creates
    assert _completed(writer, 3) == [(1, 0), (2, 0), (3, errno.ENOENT)]
    assert segment.read_bytes() == b"head:one,two"
    assert not (tmp_path / "missing.seg").exists()
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(4, str(segment), b"late")

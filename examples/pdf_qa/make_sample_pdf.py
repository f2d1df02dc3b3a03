#!/usr/bin/env python3
"""Writes sample.pdf: a two-page text PDF built from raw PDF objects (standard library only).

    python3 examples/pdf_qa/make_sample_pdf.py      # rewrites examples/pdf_qa/sample.pdf

The output is deterministic (no dates, no ids), so regenerating it changes nothing unless
the text below changed. The text is a fictional operations note; the example's questions
are about it.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

PAGES = [
    (
        "Airlock enclave operations note",
        [
            "Airlock enclave operations note. This note describes how the research enclave "
            "runs its language model gateway. The enclave has no connection to the internet: "
            "every model, certificate and software update is carried in on reviewed media, "
            "and nothing the gateway produces leaves the enclave except audit checkpoints.",
            "Roles. The enclave has three roles. Operators install and upgrade the gateway, "
            "rotate certificates and keys, and restore from backups. Tenant owners decide "
            "which people and services may use which models, and ask operators for API keys. "
            "Auditors read the audit log and its signed checkpoints; they never hold the "
            "signing key and never need access to the gateway host itself.",
            "Moving a model into the enclave. A model may be moved into the enclave only with "
            "the written approval of the security officer and one tenant owner. The operator "
            "writes the integrity manifest on the connected side, carries the model directory "
            "and the manifest across on the same medium, and verifies the manifest again "
            "inside before the model is configured. A model whose files do not match its "
            "manifest is refused by the gateway and must be carried across again.",
            "Certificates. Client certificates are issued for one year. A certificate that is "
            "lost or belongs to someone who left is revoked the same day: the operator adds "
            "it to the revocation list and reloads the gateway with a hangup signal, which "
            "takes effect for every new connection without a restart.",
        ],
    ),
    (
        "Keys, audit and recovery",
        [
            "API keys. Services that cannot present a client certificate use API keys. Keys "
            "are created for one tenant at a time, expire after ninety days, and are rotated "
            "with an overlap of one day so that a service can switch without downtime. A key "
            "that may have been exposed is revoked at once; the gateway refuses it within one "
            "second.",
            "Audit. Every request is recorded before it is served, and the gateway refuses "
            "service when it cannot record. Prompts are kept only as keyed digests, never as "
            "text. Every five minutes the signed checkpoints are exported and copied to the "
            "auditors' archive, where they are kept off the host for seven years. The "
            "auditors verify the whole log every month with the public key they keep.",
            "Backups. The audit database and the key database are backed up every night with "
            "the online backup commands, while the gateway keeps running. Backups are "
            "verified after they are written and stored on a second machine inside the "
            "enclave. A restore is practised twice a year.",
            "Incidents. If the audit log stops accepting records, the gateway answers every "
            "request with an error until the disk problem is fixed; operators are paged by "
            "the readiness probe. After an unclean stop the next start writes a recovery "
            "record, and the auditors are told.",
        ],
    ),
]

WIDTH = 88  # characters per line at 10 pt Helvetica on A4 with 50 pt margins (roughly)
LEADING = 13


def escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def page_stream(title: str, paragraphs: list[str]) -> bytes:
    lines = [f"BT /F2 14 Tf 50 790 Td {LEADING + 5} TL ({escape(title)}) Tj T* /F1 10 Tf {LEADING} TL"]
    for paragraph in paragraphs:
        for line in textwrap.wrap(paragraph, WIDTH):
            lines.append(f"({escape(line)}) Tj T*")
        lines.append("T*")
    lines.append("ET")
    return ("\n".join(lines) + "\n").encode("latin-1")


def build() -> bytes:
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")  # filled in below, once the page tree's number is known
    pages = add(b"")
    regular = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    bold = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>")
    kids = []
    for title, paragraphs in PAGES:
        content = page_stream(title, paragraphs)
        stream = add(b"<< /Length %d >>\nstream\n" % len(content) + content + b"endstream")
        kids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 595 842] "
                b"/Resources << /Font << /F1 %d 0 R /F2 %d 0 R >> >> /Contents %d 0 R >>"
                % (pages, regular, bold, stream)
            )
        )
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages
    objects[pages - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        len(kids),
    )

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        catalog,
        xref,
    )
    return bytes(out)


def main() -> int:
    target = Path(__file__).with_name("sample.pdf")
    data = build()
    target.write_bytes(data)
    print(f"wrote {target} ({len(data)} bytes, {len(PAGES)} pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Certificates hash a model once, from the bytes read or written (lumpver.fileio.recorded_sha256);
checkers always hash the file as it is now. References: hashlib on the file's bytes."""
from __future__ import annotations

import hashlib
import os

from lumpver.api.reduce import reduce_exact_to_files
from lumpver.certificates.format import check_certificate
from lumpver.fileio import read_bytes, recorded_sha256, write_bytes_atomic
from lumpver.ir.onnx_export import save_onnx
from lumpver.ir.planted import planted_network


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_recorded_digest_is_that_of_the_bytes_read_or_written_and_follows_changes(tmp_path):
    p = tmp_path / "m.bin"
    write_bytes_atomic(p, os.urandom(3 << 20))  # large: hashed on a thread
    assert recorded_sha256(p) == _sha(p)
    p.write_bytes(b"other content")  # a new size and mtime: the file is hashed again
    assert recorded_sha256(p) == _sha(p)
    assert read_bytes(p) == b"other content" and recorded_sha256(p) == _sha(p)


def test_checker_hashes_the_file_even_when_a_same_size_tamper_keeps_the_mtime(tmp_path):
    src, out, cert = tmp_path / "m.onnx", tmp_path / "r.onnx", tmp_path / "r.json"
    save_onnx(planted_network(6, (8,), 3, "relu", 2.0, seed=1).network, src)
    reduce_exact_to_files(src, out, cert)
    assert check_certificate(cert).holds
    st = os.stat(out)
    data = bytearray(out.read_bytes())
    data[-40] ^= 0xFF  # same size, in place, then the old mtime back: the recorded digest no longer holds
    with open(out, "r+b") as f:
        f.write(data)
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert recorded_sha256(out) != _sha(out)  # what the writer recorded: the bytes it wrote
    report = check_certificate(cert)
    assert not report.holds and any("SHA-256" in line for line in report.lines)


def test_certificate_json_text_parses_back_to_the_same_object():
    import json
    import math

    import pytest

    from lumpver.fileio import dumps_json

    obj = {"a": [1, 2.5, None, True, "x"], "b": {"c": [[1, 2], {"d": []}], "e": {}}, 3: "int key", "f": [],
           "g": [{"h": -0.0}], "u": "\u00e9\"\\"}
    want = json.loads(json.dumps(obj))  # the standard library's reading of the same object
    assert json.loads(dumps_json(obj)) == want
    with pytest.raises(ValueError):
        dumps_json({"x": [math.nan]})

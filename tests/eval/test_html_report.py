"""eval/report.py: the page embeds every image (the bytes round-trip through the data URI), escapes
text and table cells, and refuses a missing figure."""

import base64
import re

import numpy as np
import pytest
from PIL import Image

from ar1_jax.eval.report import Figure, Section, Table, data_uri, write_report


def test_report_embeds_images_and_escapes_text(tmp_path):
    rng = np.random.default_rng()
    png, gif = tmp_path / "a.png", tmp_path / "b.gif"
    Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(png)
    Image.fromarray(rng.integers(0, 256, (5, 6), dtype=np.uint8)).save(gif)
    page = write_report(tmp_path / "out" / "r.html", "T <1>", [
        Section("S & s", text=["a < b"], tables=[Table(["m", "x"], [["<k>", 0.12345], ["n", None]])],
                figures=[Figure(png, "cap \"1\""), Figure(gif)])])
    html = page.read_text()
    assert "T &lt;1&gt;" in html and "S &amp; s" in html and "a &lt; b" in html
    assert "<td>&lt;k&gt;</td><td>0.123</td>" in html and "<td>-</td>" in html
    uris = re.findall(r"src='(data:[^']+)'", html)
    assert [u.split(";")[0] for u in uris] == ["data:image/png", "data:image/gif"]
    assert base64.b64decode(uris[0].split(",", 1)[1]) == png.read_bytes()
    assert base64.b64decode(uris[1].split(",", 1)[1]) == gif.read_bytes()
    assert "file:" not in html and "src='/" not in html  # nothing outside the page


def test_report_refuses_missing_or_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        write_report(tmp_path / "r.html", "t", [Section("s", figures=[Figure(tmp_path / "nope.png")])])
    (tmp_path / "x.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="cannot embed"):
        data_uri(tmp_path / "x.bin")

"""benchmarks/published_code.py without the published code: its parsing and its offline
answer to the published code's checksum request (quick: no process is started)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_the_published_code_comparison_reads_its_epoch_times_and_answers_offline(tmp_path, monkeypatch):
    """benchmarks/published_code.py: the published main.py's epoch lines are parsed (the
    first epoch, which compiles, left out), a folder that is no checkout is refused, and the
    published code's request for zenkelab.org's checksums is answered from the local files."""
    import io
    import urllib.request

    import published_code
    out = "".join(f"Epoch: [{e}/4] - Loss: 0.69 -  Training acc: 55.00 - Validation acc: 56.00 - t: {t} sec\n"
                  for e, t in ((1, 15.25), (2, 1.10), (3, 1.30), (4, 1.20)))
    assert published_code.published_epoch_seconds(out) == pytest.approx(1.20)
    monkeypatch.setattr(sys, "argv", ["published_code.py", "--published", str(tmp_path)])
    with pytest.raises(SystemExit, match="not a checkout of EIS-Hub/hSNN"):
        published_code.main()
    (tmp_path / "datasets" / "audiospikes").mkdir(parents=True)
    (tmp_path / "datasets" / "audiospikes" / "md5sums.txt").write_text("0123  shd_train.h5.gz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"network"))
    exec(published_code.OFFLINE, {})
    assert urllib.request.urlopen("https://zenkelab.org/datasets/md5sums.txt").read() == b"0123  shd_train.h5.gz\n"
    assert urllib.request.urlopen("https://example.org/").read() == b"network"

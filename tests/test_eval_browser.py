"""report.html in a real browser: headless Chromium, network cut off, renders the tables and the embedded plots.

Not part of ``make test`` (CI has no browser): ``make test-browser``; needs Debian's ``chromium`` package
(``apt-get install -y chromium``) or ``CHROMIUM=/path/to/chrome``. The screenshot is kept as
``$REPORT_SCREENSHOT`` when that is set, to be looked at.
"""

import os
import shutil
import subprocess

import pytest
import torch
from _eval_tiny import save, tiny_bert_classifier, tiny_tokenizer, write_sst2_like

from llm_distill.evaluation import compare
from llm_distill.evaluation.plots import STUDENT_COLOURS

pytestmark = pytest.mark.browser

# Flags for a quiet, offline, sandbox-free headless run (containers run as root, where the sandbox cannot start).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


def _chromium() -> str:
    for exe in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if exe and shutil.which(exe):
            return shutil.which(exe)
    pytest.fail("no Chromium found: apt-get install -y chromium (Debian), or set CHROMIUM=/path/to/chrome")


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def test_report_html_renders_offline(tmp_path):
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    teacher = save(tiny_bert_classifier(hidden=64, seed=0), tok, tmp_path / "teacher")
    student = save(tiny_bert_classifier(layers=1, hidden=32, seed=1), tok, tmp_path / "student")
    (tmp_path / "sst2").mkdir()
    data = write_sst2_like(tmp_path / "sst2" / "validation.jsonl", n=24)
    out = tmp_path / "report"
    compare.compare(teacher, [student], out, dataset=data, device="cpu", timing_examples=3, timing_batch_size=2,
                    warmup=1, repeats=2, max_repeats=2)  # fmt: skip
    page = (out / "report.html").as_uri()
    exe = _chromium()
    dom = subprocess.run([exe, *FLAGS, "--dump-dom", page], capture_output=True, text=True, timeout=180).stdout
    assert "Distillation report: teacher vs student on sst2 validation" in dom
    assert dom.count("<table>") == 4 and dom.count('src="data:image/png;base64,') == 1
    shot = tmp_path / "shot.png"
    subprocess.run([exe, *FLAGS, "--window-size=1400,2400", f"--screenshot={shot}", page], capture_output=True,
                   timeout=180, check=True)  # fmt: skip
    if os.environ.get("REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["REPORT_SCREENSHOT"])
    import matplotlib.image

    pixels = torch.from_numpy(matplotlib.image.imread(shot)[..., :3].copy())
    assert pixels.shape[:2] == (2400, 1400)
    # Text and tables paint a good part of the page; the student's bar colour exists only inside the embedded PNG,
    # so finding it on screen means the plot was decoded and drawn.
    assert float((pixels < 0.9).any(-1).float().mean()) > 0.05
    blue = torch.tensor(_rgb(STUDENT_COLOURS[0]), dtype=torch.float32) / 255
    near = ((pixels - blue).abs() < 0.06).all(-1)
    assert int(near.sum()) > 500, int(near.sum())

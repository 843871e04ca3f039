"""The run page (report/index.html) and the sweep page (runs.html): structure, links to files that exist,
hostile and broken run folders, and every image loading in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from hydra import compose
from PIL import Image

from cnnlab.commands import runs, viz
from cnnlab.report.html import write_run_page
from tests.conftest import run_cli, write_tiny_idx
from tests.test_viz import hydra_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page(HTMLParser):
    """The parts of a page the tests look at: images, links, section ids, scripts."""

    def __init__(self, source: Path | str):
        super().__init__()
        self.images, self.loaded, self.links, self.sections, self.scripts = [], [], [], [], 0
        self.feed(source.read_text() if isinstance(source, Path) else source)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
            self.loaded.append(attrs.get("data-loaded"))  # set by the page's script once it has loaded
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "script":
            self.scripts += 1


def local_targets(page: Path, refs: list[str]) -> list[Path]:
    """The files that relative references on ``page`` point at (anchors within the page left out)."""
    return [page.parent / unquote(r) for r in refs if not r.startswith("#")]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two finished tiny LeNet runs (with their end-of-training report) in one folder, as a sweep has."""
    from cnnlab.train import train

    tmp = tmp_path_factory.mktemp("pages")
    data = write_tiny_idx(tmp / "data")
    for job, lr in enumerate(("0.001", "0.003")):
        with hydra_config():
            cfg = compose("train", overrides=[
                f"dataset.root={data}", "trainer.device=cpu", "trainer.tensorboard=false", "model=lenet",
                "trainer.batch_size=32", "trainer.max_epochs=2", "trainer.progress=plain",
                f"optimizer.lr={lr}", "trainer.precision=32", "trainer.threads=1",
            ])  # fmt: skip
            train(cfg, tmp / "sweep" / str(job))
    return tmp / "sweep"


def test_training_writes_the_run_page_with_every_figure(sweep):
    page = sweep / "0" / "report" / "index.html"
    parsed = Page(page)
    assert parsed.sections == ["summary", "evaluation", "figures", "epochs", "config", "files"]
    figures = sorted(p.name for p in page.parent.glob("*.png"))
    assert sorted(Path(src).name for src in parsed.images) == figures
    assert {"curves.png", "confusion_matrix.png", "reliability.png"} <= set(figures)
    assert all(p.is_file() for p in local_targets(page, parsed.images + parsed.links))
    assert parsed.scripts == 1  # the page's own
    text = page.read_text()
    assert "Per class" in text and "test_acc" in text and "data_fingerprint" in text


def test_viz_adds_its_figure_to_an_existing_page(sweep):
    with hydra_config():
        cfg = compose(
            "viz", overrides=["device=cpu", "tensorboard=false", "what=gradcam", f"run={sweep / '1'}"]
        )

    viz.main(cfg)
    assert "gradcam.png" in Page(sweep / "1" / "report" / "index.html").images


def test_runs_html_writes_the_sweep_page_linking_every_run(sweep):
    with hydra_config():
        runs.main(compose("runs", overrides=[f"dir={sweep}", "html=true", "csv=false"]))
    page = sweep / "runs.html"
    parsed = Page(page)
    assert parsed.images == ["runs_curves.png"]
    run_pages = [r for r in parsed.links if r.endswith("index.html")]
    assert sorted(run_pages) == ["0/report/index.html", "1/report/index.html"]
    assert all(p.is_file() for p in local_targets(page, parsed.images + parsed.links))
    assert Image.open(sweep / "runs_curves.png").size[0] == 1500
    assert not (sweep / "summary.csv").exists()  # csv=false still holds


def test_runs_without_html_writes_no_page(sweep, tmp_path):
    copy = shutil.copytree(sweep, tmp_path / "copy", ignore=shutil.ignore_patterns("runs.html", "runs_*.png"))
    with hydra_config():
        runs.main(compose("runs", overrides=[f"dir={copy}"]))
    assert (copy / "summary.csv").is_file() and not (copy / "runs.html").exists()


def test_hostile_and_broken_run_files_are_shown_escaped(sweep, tmp_path):
    run = shutil.copytree(sweep / "0", tmp_path / "run")
    attack = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    (run / "summary.json").write_text(json.dumps({"status": attack, "test_acc": 0.5}))
    (run / "status.json").write_text(json.dumps({"status": "failed", "error": attack}))
    (run / "metrics.csv").write_text(f"epoch,{attack}\n1,2\n")
    (run / "report" / "metrics.json").write_text("{not json")
    shutil.copy(run / "report" / "curves.png", run / "report" / 'a"<b>&.png')
    (run / "report" / "outside.png").symlink_to("/etc/hostname")
    (run / "provenance.json").write_text(json.dumps({"overrides": [attack]}))
    page = write_run_page(run)
    parsed = Page(page)
    text = page.read_text()
    assert parsed.scripts == 1 and "<script>alert" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "metrics.json is not valid JSON" in text and "config.yaml is missing" in text  # no .hydra/
    assert "outside.png" not in parsed.images  # a symbolic link is never linked
    assert all(p.is_file() for p in local_targets(page, parsed.images + parsed.links))
    assert (run / "report" / 'a"<b>&.png') in local_targets(page, parsed.images)


def test_a_run_without_files_still_gets_a_page(tmp_path):
    (tmp_path / "run" / "report").mkdir(parents=True)
    text = write_run_page(tmp_path / "run").read_text()
    assert "summary.json is missing" in text and "metrics.csv is missing" in text
    assert "report/ holds no figures yet" in text


@pytest.mark.slow
def test_viz_page_of_a_run_without_a_report_is_a_one_line_error(sweep, tmp_path):
    run = shutil.copytree(sweep / "0", tmp_path / "run", ignore=shutil.ignore_patterns("report"))
    result = run_cli("viz", "page", f"run={run}", cwd=tmp_path)
    assert result.returncode == 2
    assert "has no report/ folder" in result.stderr and "cnnlab evaluate run=" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("viz", "page", f"run={sweep / '0'}", cwd=tmp_path)
    assert result.returncode == 0 and "report/index.html" in result.stdout


def chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1280,2000", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it and runs this test")
    return CHROMIUM


@pytest.mark.parametrize("which", ["run", "sweep"])
@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_every_image_of_the_pages_loads_in_chromium(browser, sweep, tmp_path, which):
    if which == "sweep":
        with hydra_config():
            runs.main(compose("runs", overrides=[f"dir={sweep}", "html=true", "csv=false"]))
    page = sweep / "0" / "report" / "index.html" if which == "run" else sweep / "runs.html"
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", page.as_uri(), tmp_path=tmp_path)
    loaded = Page(dom.stdout).loaded
    assert loaded and loaded == ["yes"] * len(loaded), (loaded, dom.stderr[-2000:])
    shot = tmp_path / "page.png"
    chromium(f"--screenshot={shot}", page.as_uri(), tmp_path=tmp_path)
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 2000) and image.getextrema()[0] < 100  # text and figures, not a blank page


def test_runs_html_bad_value_is_a_one_line_error(sweep, tmp_path):
    result = run_cli("runs", str(sweep), "html=maybe", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "html" in result.stderr

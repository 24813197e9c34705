"""`compare --baseline` (paired differences) and `view` (HTML viewer, driven in headless Chromium),
on real runs of two baseline models over easyvqa's bundled data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_my_vqa

SHOTS, SEEDS, LIMIT = ("0", "2"), ("0", "1"), 60


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cmp") / "res"
    run_cli("run", "--model", "demo-majority,support-prior", "--tasks", "easyvqa", "--shots", *SHOTS,
            "--seeds", *SEEDS, "--limit", str(LIMIT), "--output", str(out), "-q")
    return out


def _scores(out: Path, label: str, shots: int, seed: int) -> dict[str, dict]:
    (f,) = [p for p in out.rglob("metrics.json")
            if (m := json.loads(p.read_text()))["config"]["label"] == label
            and m["config"]["shots"] == shots and m["config"]["seed"] == seed]
    return {r["query_id"]: r for r in map(json.loads, (f.parent / "predictions.jsonl").read_text().splitlines())}


def test_compare_baseline_table_and_dataframe(two_models):
    proc = run_cli("compare", str(two_models), "--baseline", "demo-majority")
    out = proc.stdout
    assert "population std ddof=0" in out and "Paired differences vs demo-majority" in out
    rows = [line for line in out.splitlines() if line.startswith("| easyvqa | accuracy | ")]
    assert len(rows) == 1 + 2  # the comparison row + one paired row per shot count
    assert run_cli("compare", str(two_models), "--baseline", "demo-majority").stdout == out  # reproducible

    from harness.reporting.paired import paired_compare

    df = paired_compare([two_models], "demo-majority")
    assert list(df["shots"]) == [0, 2] and set(df["checkpoint"]) == {"support-prior"}
    for r in df.itertuples():
        # delta from the predictions files, computed here: mean over seeds of the per-seed accuracy difference
        diffs = []
        for seed in (0, 1):
            a, b = _scores(two_models, "demo-majority", r.shots, seed), _scores(two_models, "support-prior", r.shots, seed)
            assert a.keys() == b.keys()
            diffs.append(100 * np.mean([b[q]["score"] - a[q]["score"] for q in a]))
        assert r.delta == pytest.approx(np.mean(diffs))
        assert r.ci_low < r.delta < r.ci_high and r.n == LIMIT and r.seeds == 2
        assert 0 < r.p <= r.p_holm <= 1 and r.significant == (r.p_holm < 0.05)
    assert {"delta", "ci_low", "ci_high", "p"} <= set(df.columns)
    # The table's own csv output carries the same numbers.
    csv = run_cli("compare", str(two_models), "--baseline", str(two_models / "demo-majority"), "--format", "csv").stdout
    assert csv.splitlines()[0].startswith("task,metric,shots,checkpoint,baseline,") and len(csv.splitlines()) == 3
    import io

    import pandas as pd

    back = pd.read_csv(io.StringIO(csv))  # numbers, not formatted strings
    np.testing.assert_allclose(back["delta"], df["delta"])
    np.testing.assert_allclose(back["p"], df["p"])


def test_pairing_is_refused_when_queries_differ(two_models, tmp_path):
    other = tmp_path / "other"
    run_cli("run", "--model", "support-prior", "--tasks", "easyvqa", "--shots", "0", "--seeds", "0",
            "--limit", "40", "--output", str(other), "-q")
    from harness.reporting.paired import paired_compare

    df = paired_compare([two_models, other], "demo-majority")  # its label is unique: no folder prefix
    refused = df[df["checkpoint"] == "other/support-prior"].iloc[0]
    assert np.isnan(refused["p"]) and "not paired" in refused["note"] and "limit 60 vs 40" in refused["note"]
    tested = df[df["checkpoint"] == f"{two_models.name}/support-prior"]
    assert tested["p"].notna().all()
    proc = run_cli("compare", str(two_models), str(other), "--baseline", "demo-majority")
    assert "limit 60 vs 40" in proc.stdout


def test_pairing_fields_by_hand():
    from harness.reporting.paired import pairing_mismatch

    base = {"model": {"name": "x"}, "label": "x", "shots": 4, "seed": 0, "limit": 100, "generation": {"num_beams": 3},
            "task": {"name": "vqav2", "options": {"support_size": 2048}, "template": "openflamingo"},
            "sampler": {"name": "random", "support_size": 2048, "seed": 0}}
    other_model = {**base, "model": {"name": "y"}, "label": "y", "generation": {"num_beams": 1},
                   "task": {**base["task"], "template": "flamingo"}}
    assert pairing_mismatch(base, other_model) is None
    assert "sampler.name 'random' vs 'rices'" in pairing_mismatch(base, {**base, "sampler": {**base["sampler"], "name": "rices"}})
    assert "sample" in pairing_mismatch(base, {**base, "sample": 500})  # a field added later counts


def test_metrics_that_are_not_a_mean_of_scores_get_no_test():
    from harness.reporting.paired import CellRecords, score_scale

    scores = np.array([1.0, 0.0, 1.0, 1.0])
    cell = lambda value: CellRecords(Path("m.json"), {}, value, ["a", "b", "c", "d"], scores, {})  # noqa: E731
    assert score_scale(cell(75.0)) == 100.0  # accuracy on 0-100 from 0/1 scores
    assert score_scale(cell(0.75)) == 1.0  # e.g. CIDEr: per-image values already on the metric's scale
    assert score_scale(cell(91.3)) is None  # ROC-AUC: not the mean of the per-sample scores


def test_compare_baseline_errors(two_models):
    proc = run_cli("compare", str(two_models), "--baseline", "gpt-17", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --baseline 'gpt-17'") and "support-prior" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_prints_the_view_command(two_models):
    proc = run_cli("run", "--model", "demo-majority", "--tasks", "easyvqa", "--shots", "0", "--seeds", "0",
                   "--limit", str(LIMIT), "--output", str(two_models), "-q")  # already done: resumes instantly
    assert f"run_eval.py view {two_models} --output {two_models}/report.html" in proc.stdout


# ---- the viewer in a real browser ------------------------------------------------------------
@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Chromium driven by selenium through the system chromedriver (``./scripts/setup.sh --tests``
    installs Debian's chromium and chromium-driver; the test never installs anything itself)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("no chromium + chromedriver on PATH: ./scripts/setup.sh --tests installs them (as root)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield driver
    driver.quit()


def _select(driver, select_id: str, value: str) -> None:
    driver.execute_script(
        "const s = document.getElementById(arguments[0]); s.value = arguments[1];"
        "s.dispatchEvent(new Event('change'));", select_id, value)


@pytest.mark.slow
def test_viewer_in_headless_chromium(two_models, browser, tmp_path):
    from harness.reporting.viewer import write_viewer

    info = write_viewer([two_models], tmp_path / "report.html")
    assert info.n_cells == 8 and info.n_samples == 8 * LIMIT and info.n_images > 0
    browser.get((tmp_path / "report.html").as_uri())
    js = browser.execute_script
    assert "demo-majority 2-shot" in js("return document.querySelector('table.summary').textContent")
    assert js("return document.querySelector('#plot img').naturalWidth") > 0
    assert "support-prior" in js("return document.getElementById('paired').textContent")

    labels = js("return [...document.getElementById('cell').options].map(o => o.textContent)")
    cell = next(i for i, t in enumerate(labels) if t.startswith("demo-majority | easyvqa | 2-shot | seed 0"))
    _select(browser, "cell", str(cell))
    assert js("return document.querySelectorAll('#cards .card').length") == 50  # one page of 60 samples
    assert js("return document.getElementById('count').textContent").strip().startswith("1-50 of 60")
    first = js("return document.querySelector('#cards .card')")
    widths = js("return [...arguments[0].querySelectorAll('img.demo-img')].map(i => i.naturalWidth)", first)
    assert len(widths) == 2 and all(w > 0 for w in widths)  # both demo images of a 2-shot query loaded
    assert js("return arguments[0].querySelector('img.query-img').naturalWidth", first) > 0
    assert "Question:" in first.text and "prompt" in first.text and "references" in first.text
    qid0 = first.get_attribute("data-qid")
    shown_prompt = js("return arguments[0].querySelector('pre').textContent", first)
    assert shown_prompt == _scores(two_models, "demo-majority", 2, 0)[qid0]["prompt"]  # rebuilt from pieces exactly
    js("document.getElementById('cards').scrollIntoView()")
    browser.save_screenshot(str(tmp_path / "viewer.png"))
    assert (tmp_path / "viewer.png").stat().st_size > 10_000

    records = _scores(two_models, "demo-majority", 2, 0)
    n_wrong = sum(r["score"] < 1 for r in records.values())
    assert 0 < n_wrong < LIMIT
    browser.find_element("id", "wrong").click()
    scores = js("return [...document.querySelectorAll('#cards .card')].map(c => Number(c.dataset.score))")
    assert len(scores) == min(50, n_wrong) and all(s < 1 for s in scores)
    assert js("return document.getElementById('count').textContent").strip().startswith(f"1-{min(50, n_wrong)} of {n_wrong}")
    browser.find_element("id", "wrong").click()

    qid = next(iter(records))
    browser.find_element("id", "search").send_keys(qid + "\n")
    shown = js("return [...document.querySelectorAll('#cards .card')].map(c => c.dataset.qid)")
    assert qid in shown and all(qid in s for s in shown) and len(shown) < 50
    browser.find_element("id", "search").clear()
    js("document.getElementById('search').dispatchEvent(new Event('input'))")

    # Disagreements with the other checkpoint, side by side.
    other = _scores(two_models, "support-prior", 2, 0)
    n_dis = sum(records[q]["prediction"].strip().lower() != other[q]["prediction"].strip().lower()
                or records[q]["score"] != other[q]["score"] for q in records)
    options = js("return [...document.getElementById('other').options].map(o => [o.value, o.textContent])")
    value = next(v for v, t in options if t == "support-prior")
    _select(browser, "other", value)
    assert js("return document.querySelectorAll('#cards .pair').length") == min(50, n_dis)
    assert js("return document.querySelectorAll('#cards .pair .card').length") == 2 * min(50, n_dis)
    js("document.getElementById('cards').scrollIntoView()")
    browser.save_screenshot(str(tmp_path / "viewer_disagreements.png"))
    print(f"screenshots: {tmp_path / 'viewer.png'} {tmp_path / 'viewer_disagreements.png'}")


def test_view_cli_and_bad_input(two_models, tmp_path):
    proc = run_cli("view", str(two_models), "--output", str(tmp_path / "r.html"), "--max-images", "3")
    assert "wrote" in proc.stdout and (tmp_path / "r.html").stat().st_size > 0
    html = (tmp_path / "r.html").read_text()
    assert "thumbnail cap reached: 3 images embedded" in html and html.count("data:image/jpeg;base64,") == 3
    proc = run_cli("view", str(tmp_path / "nothing"), check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: results folder not found")
    proc = run_cli("view", str(two_models), "--output", str(tmp_path), check=False)
    assert proc.returncode == 2 and "is a folder" in proc.stderr


def test_viewer_failed_filter_and_unreadable_image(browser, tmp_path):
    """A plug-in task with one unreadable test image, run by the bundled flamingo: that sample fails."""
    root = write_my_vqa(tmp_path / "data")
    (root / "images" / "test1.png").write_bytes(b"broken")
    out, page = tmp_path / "res", tmp_path / "view.html"
    run_cli("run", "--include", "examples/my_task.py", "--model", "flamingo", "--tasks", "my_vqa", "--data-dir",
            str(tmp_path / "data"), "--shots", "2", "--seeds", "0", "--output", str(out), "-q")
    proc = run_cli("view", str(out), "--include", "examples/my_task.py", "--data-dir", str(tmp_path / "data"),
                   "--output", str(page))
    assert "6 samples in 1 cells" in proc.stdout
    browser.get(page.as_uri())
    js = browser.execute_script
    assert js("return document.querySelectorAll('#cards .card').length") == 6
    assert "1 media could not be read" in js("return document.getElementById('notes').textContent")
    browser.find_element("id", "failed").click()
    cards = js("return [...document.querySelectorAll('#cards .card')].map(c => [c.dataset.qid, c.className])")
    assert cards == [["test1", "card failed"]]
    failed = js("return document.querySelector('#cards .card')")
    assert "image could not be read" in failed.text and "test1.png" in failed.text  # the file name stands in
    assert js("return arguments[0].querySelector('img.query-img')", failed) is None
    widths = js("return [...arguments[0].querySelectorAll('img.demo-img')].map(i => i.naturalWidth)", failed)
    assert len(widths) == 2 and all(w > 0 for w in widths)

"""Size and open time of the HTML viewer for one cell of 10,000 samples.

    python benchmarks/viewer_size.py [--samples 10000] [--shots 4] [--max-images 2000] [--work DIR]

Runs the demo-majority baseline on easyvqa's bundled train split (eval_split=train: 38k questions,
demos never the query itself) for one cell of N samples, writes the viewer, and opens it in headless
Chromium (when installed): time to the load event, to the first page of cards, and for the wrong-only
filter over all N samples. Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--max-images", type=int, default=2000)
    ap.add_argument("--work", default=None, help="folder for results and the HTML (default: a temp folder)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="viewer_bench_"))
    out = work / "res"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "run_eval.py"), "run", "--model", "demo-majority", "--tasks", "easyvqa",
                    "--task-arg", "eval_split=train", "--shots", str(args.shots), "--seeds", "0",
                    "--limit", str(args.samples), "--output", str(out), "-q"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    from harness.reporting.viewer import write_viewer

    t0 = time.perf_counter()
    info = write_viewer([out], work / "report.html", max_images=args.max_images)
    build = time.perf_counter() - t0
    print(f"cell: {info.n_samples} samples ({args.shots}-shot); thumbnails embedded: {info.n_images} "
          f"(cap {args.max_images})")
    print(f"file: {info.path} {info.size_bytes / 1e6:.1f} MB; written in {build:.1f} s")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        print("open time: not measured (no chromium + chromedriver on PATH)")
        return 0
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        t0 = time.perf_counter()
        driver.get(info.path.resolve().as_uri())  # returns after the load event
        wall = time.perf_counter() - t0
        nav = driver.execute_script("const t = performance.getEntriesByType('navigation')[0];"
                                    "return [t.domContentLoadedEventEnd, t.loadEventEnd];")
        cards = driver.execute_script("return document.querySelectorAll('#cards .card').length")
        print(f"open: load event after {wall:.2f} s wall (DOMContentLoaded {nav[0] / 1000:.2f} s, "
              f"load {nav[1] / 1000:.2f} s in the page's clock); {cards} cards on the first page")
        ms = driver.execute_script("const t = performance.now(); document.getElementById('wrong').click();"
                                   "return [performance.now() - t, document.getElementById('count').textContent];")
        print(f"wrong-only filter over all samples: {ms[0]:.0f} ms ({ms[1].strip()})")
    finally:
        driver.quit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

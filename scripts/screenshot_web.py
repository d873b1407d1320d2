"""Screenshot of the web app after a real run, for the README.

    .venv/bin/python scripts/screenshot_web.py [--case pt_201] [--output Screenshots/GTVAutoSeg-web.png]

Starts ``gtvautoseg serve`` on a free port on 127.0.0.1 with a data folder holding one OpenKBP
validation patient from ../shared/data, opens the page in Debian's chromium (Playwright), picks the
CT from the data folder, clicks Segment GTV with the default model, waits for the result (the views
jump to the slice with the most contour) and saves the page. The server is stopped after.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "openkbp" / "validation"
TIMEOUT_MS = 600_000


def main(argv=None) -> int:
    from GTVAutoSegWeb.browser import CHROMIUM, browser_args, free_port, stop_server, wait_for

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="pt_201")
    parser.add_argument("--output", type=Path, default=ROOT / "Screenshots" / "GTVAutoSeg-web.png")
    args = parser.parse_args(argv)
    case = DATA / args.case
    if not (case / "ct.nii.gz").is_file():
        sys.exit(f"screenshot_web: {case / 'ct.nii.gz'} not found (the real data lives in ../shared/data)")
    if not Path(CHROMIUM).is_file():
        sys.exit(f"screenshot_web: {CHROMIUM} is missing (bash scripts/setup_system.sh browser)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        data, log_path = Path(tmp) / "data", Path(tmp) / "server.log"
        data.mkdir()
        (data / args.case).symlink_to(case, target_is_directory=True)
        port = free_port()
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "GTVAutoSegLib.cli", "serve", "--port", str(port), "--data", str(data),
                 "--output", str(Path(tmp) / "output")], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            wait_for(lambda: "GTVAutoSeg web app on" in log_path.read_text() or server.poll() is not None,
                     TIMEOUT_MS / 1000, "the server to start")
            if server.poll() is not None:
                sys.exit(f"screenshot_web: the server stopped:\n{log_path.read_text()[-2000:]}")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=browser_args())
                page = browser.new_page(viewport={"width": 1500, "height": 900})
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(f"http://127.0.0.1:{port}/")
                page.click("#data-select")
                page.click(f".v-list-item:has-text('{args.case}/ct.nii.gz')")
                page.wait_for_selector(f"#ct-info:has-text('{args.case}:')")
                page.click("#segment-button")
                page.wait_for_selector("#segment-button:has-text('Cancel')")
                page.wait_for_selector("#segment-info")
                page.wait_for_selector("#segment-button:has-text('Segment GTV')")
                page.wait_for_timeout(3000)  # the views' last images arrive
                args.output.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.output))
                browser.close()
        finally:
            stop_server(server)
    print(f"screenshot_web: wrote {args.output} ({args.output.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

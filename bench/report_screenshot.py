"""Render a `stepscope report` HTML file in headless Chromium, offline, and check the picture.

    python bench/report_screenshot.py REPORT.html OUT.png [--width 1400] [--height 8000]

Chromium runs with no network: no proxy and every host name resolving to nothing
(`--host-resolver-rules="MAP * ~NOTFOUND"`), so a report that needed to fetch anything (a
script, a font, a stylesheet from a CDN) would show it as missing here. The PNG must then
exist, have the window's size, and not be blank: the standard deviation of its pixels must
be above `MIN_STD` (a white page has 0). Exit 0 when it passes, 1 when it does not, 2 for a
bad argument; exit 0 with a `skipped: no Chromium` line when no Chromium is installed.

Not timed: this checks what a person sees, not how fast.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: The names Chromium is installed under (Debian's `chromium`, Ubuntu's snap `chromium-browser`,
#: Google's `google-chrome`).
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Pixel standard deviation (0..1 scale) below which a page counts as blank. A white page
#: with a few lines of text is ~0.05; a report with plots ~0.2.
MIN_STD = 0.02


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(browser: str, html_path: Path, png_path: Path, width: int, height: int, timeout: float = 120) -> None:
    """Chromium's own --screenshot of `html_path` at width x height CSS pixels (device scale 1)."""
    with tempfile.TemporaryDirectory(prefix="stepscope-chromium-") as profile:
        cmd = [
            browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing can be fetched
            "--disable-background-networking", "--disable-component-update", "--no-first-run",
            "--force-device-scale-factor=1", f"--user-data-dir={profile}",
            f"--window-size={width},{height}", f"--screenshot={png_path}",
            html_path.resolve().as_uri(),
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)


def check_png(png_path: Path, width: int, height: int) -> tuple[bool, str]:
    """(passed, what was found): the PNG's size and its pixels' standard deviation."""
    from matplotlib import image

    if not png_path.is_file():
        return False, f"{png_path}: no screenshot was written"
    pixels = image.imread(str(png_path))  # floats in 0..1, shape (height, width, channels)
    h, w = pixels.shape[:2]
    std = float(pixels[..., :3].std())
    found = f"{png_path}: {w}x{h} pixels, pixel standard deviation {std:.3f}, {png_path.stat().st_size:,} bytes"
    if (w, h) != (width, height):
        return False, f"{found}; expected {width}x{height}"
    if std < MIN_STD:
        return False, f"{found}; the page looks blank (standard deviation under {MIN_STD})"
    return True, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=8000)  # a quickstart report is ~6000 px tall
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"error: {args.report}: no such file", file=sys.stderr)
        return 2
    browser = find_browser()
    if browser is None:
        print(f"skipped: no Chromium (looked for {', '.join(BROWSERS)} on PATH)")
        return 0
    try:
        screenshot(browser, args.report, args.out, args.width, args.height)
    except subprocess.CalledProcessError as exc:
        print(f"failed: {os.path.basename(browser)} exited {exc.returncode}: {exc.stderr.decode(errors='replace')[-500:]}",
              file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired:
        print(f"failed: {os.path.basename(browser)} took longer than 120 s", file=sys.stderr)
        return 1
    passed, found = check_png(args.out, args.width, args.height)
    print(("ok: " if passed else "failed: ") + found)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

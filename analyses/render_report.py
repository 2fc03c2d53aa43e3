"""Render a report.html to PNG with headless Chromium (to look at what a user sees).

    python analyses/render_report.py unpact_out/demo/report.html report.png [--height 6000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path


def render(html: str | Path, png: str | Path, width: int = 1300, height: int = 6000) -> Path:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        raise RuntimeError("no Chromium found: install it (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={Path(png).resolve()}", Path(html).resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    return Path(png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("html")
    ap.add_argument("png")
    ap.add_argument("--height", type=int, default=6000)
    a = ap.parse_args()
    print(render(a.html, a.png, height=a.height))


if __name__ == "__main__":
    main()

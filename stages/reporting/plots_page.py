"""`dvc plots show`, as a page that opens without a network: DVC's own page loads Vega, Vega-Lite and Vega-Embed
from a CDN, so on an offline machine (a cluster node, this project's CI) its charts stay blank; this page carries
the three libraries inline (vl-convert-python's bundle). Everything else is DVC's: the same plots, templates and
data as `dvc plots show` / `dvc plots diff`.

    python -m stages.reporting.plots_page                         # dvc_plots/index.html, every plot of dvc.yaml
    python -m stages.reporting.plots_page --out page plots/gan    # some plots only (targets, as for dvc plots show)
    python -m stages.reporting.plots_page --revs HEAD~1 HEAD      # dvc plots diff of two commits
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PAGE = """<!DOCTYPE html>
<html>
<head>
  {refresh_tag}
  <meta charset="utf-8">
  <title>lip: plots</title>
  <script>BUNDLE</script>
  <style>table { border-spacing: 15px; }</style>
</head>
<body>
  {plot_divs}
</body>
</html>
"""


def page_template() -> str:
    """DVC's HTML template with the Vega libraries inline (DVC fills {plot_divs}; no {scripts}: no CDN tags)."""
    try:
        import vl_convert
    except ImportError as err:
        raise SystemExit("ERROR: the offline plots page needs vl-convert-python: pip install -e '.[dev]'") from err
    return PAGE.replace("BUNDLE", vl_convert.javascript_bundle())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help="plots to show (default: every plot of dvc.yaml)")
    ap.add_argument("--out", default="dvc_plots", help="folder for index.html (default: dvc_plots)")
    ap.add_argument("--revs", nargs="+", help="commits to compare, as dvc plots diff (default: the workspace)")
    args = ap.parse_args(argv)
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    if dvc is None:
        raise SystemExit("ERROR: dvc is not installed: pip install -e '.[pipeline]'")
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "page.html"
        template.write_text(page_template(), encoding="utf8")
        if args.revs:
            cmd = [dvc, "plots", "diff", *args.revs, *(["--targets", *args.targets] if args.targets else [])]
        else:
            cmd = [dvc, "plots", "show", *args.targets]
        return subprocess.run([*cmd, "--html-template", str(template), "-o", args.out]).returncode


if __name__ == "__main__":
    sys.exit(main())

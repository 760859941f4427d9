"""An HTML template for `dvc plots show` that works without internet.

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN, so on an offline
machine it stays blank. This writes a template with the same three libraries
inlined, read from the npm packages that `scripts/setup.sh` installs into
web/node_modules (versions in web/package.json: the ones DVC's page names).

    python -m beluga.offline_page web/node_modules .dvc/plots/offline.html
"""

from __future__ import annotations

import sys
from pathlib import Path

from .atomic import write_text

LIBRARIES = (
    "vega/build/vega.min.js",
    "vega-lite/build/vega-lite.min.js",
    "vega-embed/build/vega-embed.min.js",
)

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>beluga: DVC plots</title>
    <!-- Vega, Vega-Lite and Vega-Embed from npm, inlined: this page needs no network. -->
@LIBRARIES@
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
        img { max-width: 100%; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def build(node_modules: Path) -> str:
    """The template text, with each library in a <script> element of its own."""
    scripts = []
    for library in LIBRARIES:
        path = node_modules / library
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `bash scripts/setup.sh`")
        scripts.append(f"<script>\n{path.read_text(encoding='utf-8')}\n</script>")
    return PAGE.replace("@LIBRARIES@", "\n".join(scripts))


def main(argv: list[str]) -> None:
    node_modules, out = (Path(a) for a in argv)
    write_text(out, build(node_modules))


if __name__ == "__main__":
    main(sys.argv[1:])

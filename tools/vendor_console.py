"""Refresh the console's vendored browser libraries from the npm registry: `python tools/vendor_console.py`.

Each library is pinned below (package, exact version, the file we ship); this fetches the package with
`npm pack`, copies that one file and its licence into gateway/console/static/, and records name,
version and SHA-256 in static/vendor.json. The files are committed, so `make run` needs no Node and
no network; only whoever bumps a version here needs npm. Libraries are kept ones, not hand-written:
dagre lays out the journey graph, Chart.js draws the score history, GrapesJS with grapesjs-mjml is the
templates' block editor.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

STATIC = Path(__file__).resolve().parents[1] / "gateway" / "console" / "static"
PINS = [
    # (npm package, version, file inside the package, name served under /console/static/)
    ("@dagrejs/dagre", "3.1.4", "package/dist/dagre.min.js", "dagre.min.js"),
    ("chart.js", "4.6.2", "package/dist/chart.umd.min.js", "chart.umd.min.js"),
    # The templates' block editor: GrapesJS (the builder Mautic embeds) with its MJML plugin, which
    # bundles mjml-browser to draw MJML blocks in the canvas.
    ("grapesjs", "0.23.6", "package/dist/grapes.min.js", "grapes.min.js"),
    ("grapesjs", "0.23.6", "package/dist/css/grapes.min.css", "grapes.min.css"),
    ("grapesjs-mjml", "1.0.8", "package/dist/index.js", "grapesjs-mjml.min.js"),
]


def _strip_source_map(text: bytes) -> bytes:
    # The .map files are not shipped: a browser asking for one would only log a 404.
    lines = text.rstrip(b"\n").split(b"\n")
    return b"\n".join(line for line in lines if not line.startswith(b"//# sourceMappingURL=")) + b"\n"


def main() -> int:
    manifest = []
    with tempfile.TemporaryDirectory() as tmp:
        for package, version, inner, served in PINS:
            out = subprocess.run(["npm", "pack", f"{package}@{version}", "--silent"], cwd=tmp, check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            with tarfile.open(Path(tmp) / out) as archive:
                body = archive.extractfile(inner)
                names = [n for n in archive.getnames() if n.lower().startswith("package/licen")]
                licence = archive.extractfile(names[0]) if names else None
                assert body is not None and licence is not None, f"{package}: {inner} or LICENSE missing"
                data = _strip_source_map(body.read())
                (STATIC / served).write_bytes(data)
                (STATIC / f"{served}.LICENSE.txt").write_bytes(licence.read())
            manifest.append({"package": package, "version": version, "file": served,
                             "sha256": hashlib.sha256(data).hexdigest()})
            print(f"{package}@{version} -> {served}")
    (STATIC / "vendor.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

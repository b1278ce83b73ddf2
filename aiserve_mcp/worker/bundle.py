"""The worker bundle: a wheel of this very installation that rented machines install, and the start-up
script that fetches it, checks it and starts ``aiserve worker``.

A rented machine never installs the worker by its name on a package index: ``aiserve`` there is an
unrelated project. It downloads the wheel from this platform (``GET /api/v1/worker/bundle``) and refuses
it unless its SHA-256 is the one written into the script at rent time; only the wheel's dependencies come
from the index, by name.

The wheel is written from the installed files, so a regular and an editable install give the same thing:
the ``aiserve_mcp`` package's modules and data files, the distribution's metadata (name, version and
requirements: the headers of its ``METADATA``) and its entry points. Entries are sorted, stored
uncompressed, with a fixed date and mode, so one installation always gives the same bytes, hence the same
hash, in every process and on every machine that runs it: a rent's hash matches whichever server process
the machine downloads from. It is built once per process and kept in the data directory, keyed by version
and content hash.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import ipaddress
import os
import re
import shlex
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Final

import anyio
import httpx

import aiserve_mcp
from aiserve_mcp.core.errors import ServiceUnavailable
from aiserve_mcp.core.settings import Settings
from aiserve_mcp.worker import TOKEN_ENV

DISTRIBUTION: Final = "aiserve"
BUNDLE_PATH: Final = "/api/v1/worker/bundle"
WORKER_PORT: Final = 8000  # the port the worker serves on inside a rented machine
PUBLIC_URL_SETTING: Final = "AISERVE_PUBLIC_URL"
_PACKAGED: Final = frozenset({".py", ".json", ".pyi"})  # what the package ships besides py.typed
_ZIP_DATE: Final = (1980, 1, 1, 0, 0, 0)
_FILE_MODE: Final = 0o644 << 16
_ENTRY_POINTS: Final = "[console_scripts]\naiserve = aiserve_mcp.cli:main\n"
_LOCAL_NAMES: Final = re.compile(r"(^|\.)(localhost|local|internal|lan|home\.arpa)$")


class BundleUnavailable(ServiceUnavailable):
    """The worker bundle cannot be built or a rented machine could not fetch it (HTTP 503)."""


@dataclass(frozen=True)
class BundleInfo:
    """One built bundle: where it lies and what a machine checks it against."""

    name: str
    version: str
    filename: str  # aiserve-0.1.0-py3-none-any.whl: pip installs a wheel only under its proper name
    sha256: str
    size: int
    path: Path


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _package_files() -> dict[str, bytes]:
    """The package's modules and data files by their path in the wheel (``aiserve_mcp/...``)."""
    root = Path(aiserve_mcp.__file__).resolve().parent
    files: dict[str, bytes] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in names:
            path = Path(folder, name)
            if name.startswith(".") or (path.suffix not in _PACKAGED and name != "py.typed"):
                continue
            files[f"{root.name}/{path.relative_to(root).as_posix()}"] = path.read_bytes()
    if not files:
        raise BundleUnavailable(f"no package files found under {root}")
    return files


def _installed() -> tuple[metadata.Distribution, str]:
    """The installed distribution and its metadata text. An installer's ``.dist-info`` (``METADATA``) is
    preferred to a build's ``.egg-info`` (``PKG-INFO``) that a source checkout on ``sys.path`` may also
    show, so that every process of one installation picks the same one."""
    found = list(metadata.distributions(name=DISTRIBUTION))
    for name in ("METADATA", "PKG-INFO"):
        for dist in found:
            if text := dist.read_text(name):
                return dist, text
    raise BundleUnavailable(
        f"the worker bundle cannot be built: the '{DISTRIBUTION}' distribution is not installed "
        "(install this project, e.g. pip install -e .)"
    )


def _metadata_files(dist: metadata.Distribution, text: str, info_dir: str) -> dict[str, bytes]:
    """METADATA (its headers: the long description is not needed on a worker), entry points, WHEEL."""
    headers = text.replace("\r\n", "\n").split("\n\n", 1)[0].rstrip("\n") + "\n"
    wheel = "Wheel-Version: 1.0\nGenerator: aiserve-worker-bundle\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    return {
        f"{info_dir}/METADATA": headers.encode(),
        f"{info_dir}/entry_points.txt": (dist.read_text("entry_points.txt") or _ENTRY_POINTS).encode(),
        f"{info_dir}/WHEEL": wheel.encode(),
    }


def _wheel_bytes(files: dict[str, bytes], info_dir: str) -> bytes:
    """A wheel of ``files`` (package first, then dist-info, RECORD last), the same bytes every time."""
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    for name in files:
        writer.writerow([name, _record_hash(files[name]), len(files[name])])
    writer.writerow([f"{info_dir}/RECORD", "", ""])
    entries = [*files.items(), (f"{info_dir}/RECORD", rows.getvalue().encode())]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            entry = zipfile.ZipInfo(name, _ZIP_DATE)
            entry.external_attr = _FILE_MODE
            archive.writestr(entry, data)
    return out.getvalue()


class WorkerBundle:
    """The wheel of the running installation, built on first use (once per process) into
    ``<cache_dir>/<version>-<content hash>/``; later processes of the same installation reuse the file."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._built: BundleInfo | None = None
        self._lock = threading.Lock()

    async def info(self) -> BundleInfo:
        """The bundle, building it in a thread the first time."""
        if self._built is not None and self._built.path.is_file():
            return self._built
        return await anyio.to_thread.run_sync(self.build)

    def build(self) -> BundleInfo:
        with self._lock:
            if self._built is None or not self._built.path.is_file():
                self._built = self._build()
            return self._built

    def _build(self) -> BundleInfo:
        dist, text = _installed()
        name, version = _normalised(dist.metadata["Name"] or DISTRIBUTION), dist.version
        info_dir = f"{name}-{version}.dist-info"
        files = {**_package_files(), **_metadata_files(dist, text, info_dir)}
        content = hashlib.sha256()
        for path in sorted(files):
            content.update(f"{path}\0{len(files[path])}\0".encode())
            content.update(files[path])
        filename = f"{name}-{version.replace('-', '_')}-py3-none-any.whl"
        folder = self.cache_dir / f"{version}-{content.hexdigest()[:16]}"
        target = folder / filename
        if target.is_file():
            data = target.read_bytes()
        else:
            data = _wheel_bytes(files, info_dir)
            folder.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=".bundle.", dir=folder)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temporary, target)  # atomic: concurrent builders write the same bytes
        return BundleInfo(name, version, filename, hashlib.sha256(data).hexdigest(), len(data), target)


_BUNDLES: dict[Path, WorkerBundle] = {}
_BUNDLES_LOCK = threading.Lock()


def worker_bundle(data_dir: Path) -> WorkerBundle:
    """The process's one bundle for ``data_dir`` (shared by the download route and the providers)."""
    cache = (data_dir / "worker-bundle").resolve()
    with _BUNDLES_LOCK:
        return _BUNDLES.setdefault(cache, WorkerBundle(cache))


# -- where rented machines fetch it from --------------------------------------------------------------


def _host_is_local(host: str) -> bool:
    """Whether ``host`` names this machine (loopback address or a localhost name)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_is_public(host: str) -> bool:
    """Whether a machine on the internet can reach ``host``: a global address, or a dotted name outside the
    local-only suffixes (``.localhost``, ``.local``, ``.internal``, ``.lan``, ``.home.arpa``). Names are not
    resolved here: the machine resolves them, not this server."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "." in host and not _LOCAL_NAMES.search(host)
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class WorkerLaunch:
    """How a rented machine starts the worker: where it fetches the bundle, and the bundle itself.

    The bundle's address is ``public_url`` (``AISERVE_PUBLIC_URL``), which must be an absolute http(s) URL
    without credentials whose host a machine on the internet can reach. Loopback, private, link-local and
    local-only names are refused, except for a marketplace that itself runs on this machine's loopback
    (a local stand-in, as in tests): its "machines" are this machine, so a loopback address reaches the
    server, and without ``public_url`` this server's own listening address (``local_url``) is used.
    """

    public_url: str | None
    bundle: WorkerBundle
    local_url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerLaunch:
        host = settings.host
        if host in ("0.0.0.0", ""):  # noqa: S104 (the address it listens on, not one it binds)
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        shown = f"[{host}]" if ":" in host else host
        return cls(settings.public_url, worker_bundle(settings.data_dir), f"http://{shown}:{settings.port}")

    def base_url(self, marketplace_url: str) -> str:
        """The server's address as a machine rented from ``marketplace_url`` reaches it, or
        ``BundleUnavailable`` naming AISERVE_PUBLIC_URL when there is none it could use."""
        local_market = _host_is_local(httpx.URL(marketplace_url).host)
        if not self.public_url:
            if local_market:
                return self.local_url
            raise self._refused(
                f"{PUBLIC_URL_SETTING} is not set: a rented machine downloads the worker from this "
                f"server, so set {PUBLIC_URL_SETTING} to the http(s) address the internet reaches it at"
            )
        try:
            url = httpx.URL(self.public_url)
        except httpx.InvalidURL:
            raise self._refused(f"{PUBLIC_URL_SETTING} is not a valid URL") from None
        if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
            raise self._refused(f"{PUBLIC_URL_SETTING} must be an absolute http(s) URL such as https://host")
        if url.userinfo:
            raise self._refused(
                f"{PUBLIC_URL_SETTING} must not carry credentials: it is written into the command that "
                "every rented machine runs"
            )
        if not local_market and not _host_is_public(url.host):
            raise self._refused(
                f"{PUBLIC_URL_SETTING} names '{url.host}', which a rented machine on the internet cannot "
                "reach (loopback, private, link-local or local-only); set it to this server's public address"
            )
        return self.public_url.rstrip("/")

    def _refused(self, message: str) -> BundleUnavailable:
        return BundleUnavailable(
            f"cannot start a worker on a rented machine: {message}", {"setting": PUBLIC_URL_SETTING}
        )

    async def script(self, marketplace_url: str) -> str:
        """The start-up script for a machine rented from ``marketplace_url`` (refused as ``base_url``)."""
        base = self.base_url(marketplace_url)
        return startup_script(base + BUNDLE_PATH, await self.bundle.info())


_FETCH = """\
import hashlib, sys, urllib.request
url, path, want = sys.argv[1:]
with urllib.request.urlopen(url, timeout=600) as answer:
    data = answer.read()
got = hashlib.sha256(data).hexdigest()
if got != want:
    sys.exit(f"aiserve: refusing the worker bundle from {url}: sha256 {got}, expected {want}")
with open(path, "wb") as out:
    out.write(data)"""


def startup_script(bundle_url: str, bundle: BundleInfo) -> str:
    """A POSIX sh script that fetches the bundle from ``bundle_url``, refuses it unless its SHA-256 is
    ``bundle.sha256``, installs it with its dependencies into a fresh virtual environment (which also sees
    the image's own packages, such as its CUDA build of torch) under ``$HOME/.aiserve-worker``, and runs
    ``aiserve worker`` on 0.0.0.0:8000 (``AISERVE_WORKER_HOST``/``AISERVE_WORKER_PORT`` override them) with
    the token the rent put in ``AISERVE_WORKER_TOKEN``. A restart whose bundle is already installed skips
    straight to the worker; any failure stops it with a message on stderr."""
    return f"""set -eu
say() {{ echo "aiserve: $*" >&2; }}
trap 'c=$?; [ "$c" -eq 0 ] || say "worker start-up failed (exit $c)"' EXIT
[ -n "${{{TOKEN_ENV}:-}}" ] || {{ say "{TOKEN_ENV} is not set"; exit 1; }}
U={shlex.quote(bundle_url)}
H={bundle.sha256}
D="${{HOME:-/root}}/.aiserve-worker"
W="$D/{bundle.filename}"
P=$(command -v python3 || command -v python) || {{ say "python3 is not installed"; exit 1; }}
mkdir -p "$D"
if [ "$(cat "$D/installed" 2>/dev/null || true)" != "$H" ]; then
  say "fetching the worker bundle from $U"
  "$P" - "$U" "$W" "$H" <<'PY'
{_FETCH}
PY
  rm -rf "$D/venv"
  "$P" -m venv --system-site-packages "$D/venv"
  "$D/venv/bin/python" -m pip install -q --disable-pip-version-check --no-input "$W"
  echo "$H" > "$D/installed"
fi
A="${{AISERVE_WORKER_HOST:-0.0.0.0}}" Q="${{AISERVE_WORKER_PORT:-{WORKER_PORT}}}"
say "starting the worker on $A:$Q"
exec "$D/venv/bin/aiserve" worker --host "$A" --port "$Q"
"""

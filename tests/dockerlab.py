"""Offline Docker helpers for Docklet's integration tests.

Plain functions (no pytest fixtures) that build a tiny HTTP-serving image from
nothing but Debian's static busybox, push it to the local test registry started
by ``.ci/start-registry.sh`` and clean up afterwards.  Nothing here needs
Docker Hub or any other network access.
"""

from __future__ import annotations

import io
import logging
import shutil
import struct
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import docker
import docker.errors

log = logging.getLogger(__name__)

REGISTRY = "127.0.0.1:5000"
BUSYBOX = Path("/bin/busybox")

# STOPSIGNAL SIGKILL: busybox httpd runs as PID 1 and installs no SIGTERM
# handler, so a plain `docker stop` would wait out its whole grace period.
_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY index.html /www/index.html
EXPOSE 80
STOPSIGNAL SIGKILL
CMD ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]
"""


class DockerLabError(RuntimeError):
    """A test-infrastructure step (build, push, ...) failed."""


def docker_client() -> docker.DockerClient:
    """Client for the local engine (DOCKER_HOST or /var/run/docker.sock)."""
    return docker.from_env(version="auto")


def _is_static_elf(data: bytes) -> bool:
    """True when ``data`` is a 64-bit little-endian ELF without PT_INTERP."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        (p_type,) = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP: needs a dynamic loader, useless in scratch
            return False
    return True


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0  # fixed: identical contexts hit the build cache
    tar.addfile(info, io.BytesIO(data))


def _build_context(tag: str) -> io.BytesIO:
    try:
        busybox = BUSYBOX.read_bytes()
    except OSError as exc:
        raise DockerLabError(f"{BUSYBOX} missing: apt-get install busybox-static") from exc
    if not _is_static_elf(busybox):
        raise DockerLabError(f"{BUSYBOX} is not a static binary: apt-get install busybox-static")
    index = f"<!doctype html>\n<title>{tag}</title>\n<p>docklet test image {tag}</p>\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_file(tar, "Dockerfile", _DOCKERFILE.encode())
        _add_file(tar, "busybox", busybox, mode=0o755)
        _add_file(tar, "index.html", index.encode())
    buf.seek(0)
    return buf


def build_web_image(client: docker.DockerClient, tag: str, labels: dict[str, str]) -> str:
    """Build a FROM-scratch busybox image serving ``/www`` on port 80; return its id.

    ``/www/index.html`` contains ``tag``, so different tags give different images.
    Busybox applets (sh, wget, ...) are available under ``/bin``.
    """
    started = time.monotonic()
    try:
        image, _logs = client.images.build(
            fileobj=_build_context(tag),
            custom_context=True,
            tag=tag,
            labels=dict(labels),
            pull=False,
            rm=True,
            forcerm=True,
        )
    except docker.errors.BuildError as exc:
        lines = "".join(str(chunk.get("stream", chunk)) for chunk in exc.build_log)
        raise DockerLabError(f"building {tag} failed: {exc.msg}\n{lines}") from exc
    log.info("built %s (%s) in %.1fs", tag, image.short_id, time.monotonic() - started)
    return str(image.id)


def push_to_registry(client: docker.DockerClient, local_tag: str, repo_name: str, tag: str) -> str:
    """Tag ``local_tag`` as ``REGISTRY/repo_name:tag``, push it; return that reference."""
    repository = f"{REGISTRY}/{repo_name}"
    ref = f"{repository}:{tag}"
    started = time.monotonic()
    if not client.images.get(local_tag).tag(repository, tag=tag):
        raise DockerLabError(f"could not tag {local_tag} as {ref}")
    digest = None
    chunk: dict[str, Any]
    for chunk in client.images.push(repository, tag=tag, stream=True, decode=True):
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("errorDetail", {}).get("message") or chunk.get("error")
            raise DockerLabError(f"pushing {ref} failed: {detail}")
        digest = chunk.get("aux", {}).get("Digest", digest)
    if digest is None:
        raise DockerLabError(f"pushing {ref} reported no digest")
    log.info("pushed %s (%s) in %.1fs", ref, digest, time.monotonic() - started)
    return ref


def remove_image(client: docker.DockerClient, ref: str) -> None:
    """Remove an image reference (or id) if present; never raises for a missing one.

    A push or a pull also leaves a digest reference in the tag's repository
    (`repo@sha256:…`): it goes too, or the image would stay behind as `repo:<none>`.
    """
    try:
        digests = client.images.get(ref).attrs.get("RepoDigests") or []
    except docker.errors.NotFound:
        return
    repository = ref.rsplit(":", 1)[0] if "/" in ref else None
    for name in [ref, *(d for d in digests if repository and d.startswith(f"{repository}@"))]:
        try:
            client.images.remove(name, force=True)
        except docker.errors.NotFound:
            continue
        log.debug("removed image %s", name)


@contextmanager
def two_web_images(client: docker.DockerClient, repo: str, tag: str) -> Iterator[tuple[str, str]]:
    """Two busybox web images, A and B, pushed to the local registry as `repo`:a-`tag` and
    `repo`:b-`tag`; yields their registry refs and removes the local tags afterwards (the
    registry keeps them). What the rollout benchmarks update from and to."""
    made: list[str] = []
    try:
        refs = []
        for variant in ("a", "b"):
            local = f"{repo}:{variant}-{tag}-local"
            made.append(local)
            build_web_image(client, local, {"docklet.bench": tag})
            made.append(f"{REGISTRY}/{repo}:{variant}-{tag}")
            refs.append(push_to_registry(client, local, repo, f"{variant}-{tag}"))
        yield refs[0], refs[1]
    finally:
        for ref in reversed(made):
            with suppress(docker.errors.APIError):
                remove_image(client, ref)


def registry_available() -> bool:
    """True when the local test registry answers ``GET /v2/`` with 200."""
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class ExtraEngine:
    """A second Docker engine on this machine, standing in for a second host.

    It gets its own data and exec roots, socket, pid file and bridge (an engine
    started with --bridge=none would delete the main engine's docker0), no
    iptables rules, and its own /etc/docker through a private mount namespace:
    Docker 20.10 derives the engine ID from /etc/docker/key.json, and two
    engines sharing it would look like one node.
    """

    def __init__(self, workdir: Path, name: str, subnet_octet: int) -> None:
        self.workdir, self.bridge = workdir, f"br-{name}"[:15]
        self.socket = workdir / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.address = f"10.231.{subnet_octet}.1/24"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        (self.workdir / "etc").mkdir(parents=True, exist_ok=True)
        for args in (
            ["link", "add", self.bridge, "type", "bridge"],
            ["addr", "add", self.address, "dev", self.bridge],
            ["link", "set", self.bridge, "up"],
        ):
            subprocess.run(["ip", *args], check=True)
        w = self.workdir
        dockerd = (
            f"mount --bind {w}/etc /etc/docker && exec dockerd --data-root {w}/data"
            f" --exec-root {w}/exec -H {self.url} --pidfile {w}/docker.pid --iptables=false"
            f" --ip-masq=false --bridge={self.bridge}"
        )
        with open(w / "dockerd.log", "wb") as out:
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", dockerd],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DockerLabError(f"dockerd exited: {(w / 'dockerd.log').read_text()[-2000:]}")
            try:
                self.client().ping()
                return
            except docker.errors.DockerException:
                time.sleep(0.2)
        raise DockerLabError(f"dockerd on {self.url} did not answer in {timeout:g}s")

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, version="auto", timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

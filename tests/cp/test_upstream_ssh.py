"""An ssh:// upstream with a deploy key: a real `sshd` the test starts on loopback.

The server accepts only the deploy key (authorized_keys in the test's own
directory) and is known by the known_hosts file given as --git-known-hosts,
so nothing outside the test's directory is used; a host key not in it is refused.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import WSGIClient, free_port, wait_for
from test_upstream import APP, create, git, plane, revision_of, upstream_config

from docklet.common.errors import UpstreamUnavailable

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

pytestmark = pytest.mark.skipif(
    not Path(SSHD).exists(), reason="no sshd (openssh-server; .ci/run installs it)"
)


class SSHHost:
    """sshd on loopback serving one bare repository to one deploy key."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        self.root = root
        self.bare = root / "team.git"
        git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        for name in ("host_key", "deploy_key", "other_key"):
            keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)]
            subprocess.run(keygen, check=True)
        (root / "authorized_keys").write_text((root / "deploy_key.pub").read_text())
        self.port = free_port()
        config = root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        self.sshd = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(root / "sshd.log").open("wb"),
        )
        host_key = (root / "host_key.pub").read_text().split()[:2]
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(host_key)}\n")
        self.url = f"ssh://root@127.0.0.1:{self.port}{self.bare}"

    def stop(self) -> None:
        self.sshd.terminate()
        self.sshd.wait(timeout=10)


@pytest.fixture
def ssh_host(tmp_path: Path) -> Iterator[SSHHost]:
    host = SSHHost(tmp_path / "ssh")
    try:
        wait_for(lambda: _listening(host.port), 10, "sshd to listen")
        yield host
    finally:
        host.stop()


def _keys(host: SSHHost, key: str, known_hosts: Path | None = None) -> dict:
    return {
        "token": None,
        "git_ssh_key": host.root / key,
        "git_known_hosts": known_hosts or host.known_hosts,
    }


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_deploy_key_fetches_and_pushes_over_ssh(tmp_path: Path, ssh_host: SSHHost) -> None:
    from docklet.cp.http.api import make_app

    cp = plane(upstream_config(tmp_path, ssh_host.url, **_keys(ssh_host, "deploy_key")))
    try:
        cp.passes.follow()  # an empty upstream: nothing yet
        status, view = create(WSGIClient(make_app(cp)), name="web")
        assert status == 201, view
        shown = git("show", "main:apps/web.yaml", cwd=ssh_host.bare)
        assert "name: web" in shown
        assert revision_of(cp, "web") == 1
    finally:
        cp.store.close()


def test_a_key_the_host_does_not_take_is_a_clear_error(tmp_path: Path, ssh_host: SSHHost) -> None:
    cp = plane(upstream_config(tmp_path, ssh_host.url, **_keys(ssh_host, "other_key")))
    try:
        with pytest.raises(UpstreamUnavailable) as refused:
            cp.passes.follow()
        assert f"cannot fetch main from {ssh_host.url}" in refused.value.message
    finally:
        cp.store.close()


def test_an_app_pushed_over_ssh_by_a_person_is_followed(tmp_path: Path, ssh_host: SSHHost) -> None:
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", str(work), cwd=tmp_path)
    (work / "apps").mkdir()
    (work / "apps" / "db.yaml").write_text(APP.format(name="db", image="postgres:16"))
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "Add db", cwd=work)
    git("push", "-q", str(ssh_host.bare), "HEAD:main", cwd=work)  # by path: the person's side
    cp = plane(upstream_config(tmp_path, ssh_host.url, **_keys(ssh_host, "deploy_key")))
    try:
        fetched = cp.passes.follow()
        assert fetched is not None and fetched.moved
        assert revision_of(cp, "db") == 1
    finally:
        cp.store.close()


def test_a_host_whose_key_is_not_known_is_refused(tmp_path: Path, ssh_host: SSHHost) -> None:
    """Another host key for the address (a man in the middle): nothing is fetched."""
    stranger = tmp_path / "known_hosts"
    other = (ssh_host.root / "other_key.pub").read_text().split()[:2]
    stranger.write_text(f"[127.0.0.1]:{ssh_host.port} {' '.join(other)}\n")
    cp = plane(upstream_config(tmp_path, ssh_host.url, **_keys(ssh_host, "deploy_key", stranger)))
    try:
        with pytest.raises(UpstreamUnavailable) as refused:
            cp.passes.follow()
        assert "Host key verification failed" in refused.value.message
        assert cp.repo.head() is None
    finally:
        cp.store.close()

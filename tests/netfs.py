"""Two clients of one network filesystem on this machine: two "nodes" on one RWX volume.

No kernel NFS client is at hand, but FUSE is: an sshd of our own on 127.0.0.1 exports a
folder, and ``sshfs`` mounts it twice. Each mount has its own attribute and directory caches,
so (as on NFS) a listing on one can miss for many seconds what the other just created, while
a file opened by name is the file on the server, and a rename is exclusive on the server.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Listings stale for up to 20 s (what ENVIRONMENT.md measured); attributes for up to 2 s, about
# what an NFS client shows after an open (close-to-open revalidates them; sshfs does not).
# Leases need lease_s above that staleness plus the renew interval (docs/reliability.md).
SSHFS_OPTIONS = (
    "cache=yes,dir_cache=yes,dcache_timeout=20,dcache_stat_timeout=2,StrictHostKeyChecking=no"
)


@dataclass(frozen=True)
class TwoMounts:
    export: Path  # the server's folder
    mounts: tuple[Path, Path]  # the two clients' views of it


def missing() -> str | None:
    """Why two mounts cannot be made here, or None."""
    for tool in ("sshfs", "ssh-keygen", "fusermount"):
        if shutil.which(tool) is None:
            return f"needs {tool}: apt-get install sshfs openssh-server"
    if not Path("/usr/sbin/sshd").exists():
        return "needs sshd: apt-get install openssh-server"
    if not Path("/dev/fuse").exists():
        return "needs /dev/fuse"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.connect(("127.0.0.1", port))
            return
        time.sleep(0.1)
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port} within {timeout} s")


@contextlib.contextmanager
def two_mounts(work: Path, export: Path) -> Iterator[TwoMounts]:
    """Export `export` over sshd and mount it at work/node-a and work/node-b."""
    why = missing()
    if why:
        raise RuntimeError(why)
    keys = work / "ssh"
    keys.mkdir(parents=True)
    for name in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True
        )
    shutil.copy(keys / "client.pub", keys / "authorized_keys")
    port = _free_port()
    config = keys / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPidFile {keys / 'sshd.pid'}\n"
        "PasswordAuthentication no\nPermitRootLogin yes\nStrictModes no\nUsePAM no\n"
        "Subsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    subprocess.run(["/usr/sbin/sshd", "-f", str(config)], check=True)
    mounted: list[Path] = []
    try:
        _wait_listening(port, 30)
        for node in ("node-a", "node-b"):
            mnt = work / node
            mnt.mkdir()
            subprocess.run(
                ["sshfs", "-p", str(port), "-o",
                 f"IdentityFile={keys / 'client'},UserKnownHostsFile=/dev/null,{SSHFS_OPTIONS}",
                 f"root@127.0.0.1:{export}", str(mnt)],
                check=True, capture_output=True,
            )  # fmt: skip
            mounted.append(mnt)
        yield TwoMounts(export, (mounted[0], mounted[1]))
    finally:
        for mnt in mounted:
            subprocess.run(["fusermount", "-u", "-z", str(mnt)], check=False)
        pid = keys / "sshd.pid"
        if pid.exists():
            subprocess.run(["kill", pid.read_text().strip()], check=False)

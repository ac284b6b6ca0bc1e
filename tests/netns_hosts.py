"""Hosts without a shared filesystem on this machine, for the tests of running on a cluster.

Each host is a Linux network namespace, linked by a veth pair to a bridge in a namespace of
its own (the switch); the addresses exist only inside these namespaces. Every command on a
host runs in a UTS namespace (its host name) and a mount namespace of its own. The first host is
the head: it sees this machine's files and runs `mpiexec` and rank 0. Every other host
sees, in place of /tmp, a folder of its own (its "disk"): it sees neither the test's script
folder nor its kernels (pytest's folders are under /tmp), but the venv is visible, as
software installed on every node is. MPICH's hydra starts the ranks through its ssh
launcher with `-launcher-exec` set to a wrapper that runs the command on the named host
instead of over ssh. Host names resolve through /etc/netns/NAME/hosts, which
`ip netns exec` mounts over /etc/hosts in the namespace only. Folders named in `hidden`
(outside /tmp) are covered with an empty tmpfs on every host but the head.

Needs root, `ip` (iproute2) and `unshare` (util-linux). Every namespace, link, process and
file made is removed on leaving the context, even when the test failed; the mounts live in
the mount namespaces of the processes and go with them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

PREFIX = "distxtest"
INSTALLED_REPOSITORY = Path(__file__).resolve().parent.parent
SUBNET = "10.213.7"  # only ever assigned inside the namespaces made here
WRAPPER = """\
#!/bin/sh
# hydra's ssh launcher calls: WRAPPER [ssh options] HOST COMMAND...; run COMMAND on HOST.
while [ "${{1#-}}" != "$1" ]; do shift; done
host=$1; shift
case $host in
{cases}
  *) echo "no test host $host" >&2; exit 255;;
esac
"""
CASE = """\
  {name}) exec ip netns exec {namespace} unshare --uts --mount --propagation private \\
      sh -c 'hostname "$0" && {mount}exec sh -c "$1"' {name} "$*";;"""


# The MPICH wheel talks through UCX, which sees one machine (one boot id) and would pass
# messages between the hosts through shared memory; TCP only makes them cross the links,
# as between real nodes (ranks of one host still share memory, through MPICH's own).
NETWORK_ONLY = {"UCX_TLS": "tcp,self"}


def why_not_available() -> str | None:
    """None when test hosts can be made here, else the reason."""
    if sys.platform != "linux":
        return "test hosts need Linux namespaces"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    missing = [tool for tool in ("ip", "unshare") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian: iproute2, util-linux)"
    if not _launcher().exists() or "HYDRA" not in subprocess.run(
            [str(_launcher()), "--version"], capture_output=True, text=True).stdout:
        return "the hosts are reached through MPICH's hydra launcher (pip install .[mpich])"
    probe = f"{PREFIX}probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


class Hosts:
    """Hosts `names[0]` (the head) .. `names[-1]`, made by `hosts()`."""

    def __init__(self, folder: Path, count: int, hidden: tuple[Path, ...] = ()) -> None:
        tag = f"{os.getpid() % 100000}"
        self.folder = folder
        self.names = [f"node{index + 1}" for index in range(count)]
        self.namespaces = {name: f"{PREFIX}{tag}{name}" for name in self.names}
        self.links = {name: f"dx{tag}{name}" for name in self.names}  # at most 15 chars
        self.addresses = {name: f"{SUBNET}.{index + 1}" for index, name in
                          enumerate(self.names)}
        self.switch = f"{PREFIX}{tag}switch"
        self.wrapper = folder / "enter-host"
        self.hidden = hidden

    def disk(self, name: str) -> Path:
        """What a host other than the head sees as /tmp."""
        return self.folder / "disks" / name

    def seen_by(self, name: str, path: Path) -> Path:
        """Where on this machine's files a path of host `name` lies."""
        if name == self.names[0] or not path.is_relative_to("/tmp"):
            return path
        return self.disk(name) / path.relative_to("/tmp")

    def build(self) -> None:
        hosts_file = "127.0.0.1 localhost\n" + "".join(
            f"{self.addresses[name]} {name}\n" for name in self.names)
        for name in self.names:
            namespace = self.namespaces[name]
            _ip("netns", "add", namespace)
            Path("/etc/netns", namespace).mkdir(parents=True, exist_ok=True)
            Path("/etc/netns", namespace, "hosts").write_text(hosts_file)
            _ip("-n", namespace, "link", "set", "lo", "up")
        # A switch: a namespace holding only a bridge, with one veth pair to each host.
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "bridge", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "bridge", "up")
        for name in self.names:
            inner, outer = self.links[name], f"{self.links[name]}s"
            _ip("link", "add", inner, "netns", self.namespaces[name], "type", "veth",
                "peer", "name", outer, "netns", self.switch)
            _ip("-n", self.switch, "link", "set", outer, "master", "bridge", "up")
            _ip("-n", self.namespaces[name], "addr", "add", f"{self.addresses[name]}/24",
                "dev", inner)
            _ip("-n", self.namespaces[name], "link", "set", inner, "up")
        head = self.names[0]
        cases = []
        covers = "".join(f"mount -t tmpfs none {path} && " for path in self.hidden)
        for name in self.names:
            mount = "" if name == head else (f"{self._keep_installed(name)}"
                                             f"mount --rbind {self.disk(name)} /tmp && {covers}")
            if name != head:
                self.disk(name).mkdir(parents=True, exist_ok=True)
            cases.append(CASE.format(name=name, namespace=self.namespaces[name],
                                     mount=mount))
        self.wrapper.write_text(WRAPPER.format(cases="\n".join(cases)))
        self.wrapper.chmod(0o755)

    def _keep_installed(self, name: str) -> str:
        """Mounts that keep what is installed (the repository with its venv, Python) visible
        on host `name` when it lies under /tmp, which the host's own disk covers: as on a
        real cluster, software is installed on every node (a CI clone may live in /tmp)."""
        installed = {INSTALLED_REPOSITORY, Path(sys.prefix).resolve(),
                     Path(sys.base_prefix).resolve()}
        mounts = []
        for path in sorted(installed):
            if path.is_relative_to("/tmp") and not any(
                    path != other and path.is_relative_to(other) for other in installed):
                inside = self.disk(name) / path.relative_to("/tmp")
                inside.mkdir(parents=True, exist_ok=True)
                mounts.append(f"mount --bind {path} {inside} && ")
        return "".join(mounts)

    def command(self, name: str, *command: str) -> list[str]:
        """`command` run on host `name` (its network, host name and files)."""
        import shlex

        return [str(self.wrapper), name, shlex.join(command)]

    def mpiexec(self, ranks: int, *command: str, hosts: list[str] | None = None) -> list[str]:
        """`mpiexec` on the head host, placing ranks round-robin over `hosts` (all); run it
        with NETWORK_ONLY in its environment."""
        return self.command(self.names[0], str(_launcher()), "-launcher", "ssh",
                            "-launcher-exec", str(self.wrapper),
                            "-hosts", ",".join(hosts or self.names), "-n", str(ranks),
                            *command)

    def processes(self, name: str) -> list[int]:
        listed = subprocess.run(["ip", "netns", "pids", self.namespaces[name]],
                                capture_output=True, text=True).stdout
        return [int(pid) for pid in listed.split()]

    def power_off(self, name: str) -> None:
        """Kill every process of a host at once, as a node that loses power."""
        for pid in self.processes(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def settle(self, name: str, seconds: float) -> bool:
        """Whether every process of host `name` ended within `seconds`."""
        _wait(lambda: not self.processes(name), seconds)
        return not self.processes(name)

    def tear_down(self) -> None:
        for _ in range(2):  # twice: a process may have been entering a host meanwhile
            for name in self.names:
                self.power_off(name)
            time.sleep(0.3)
        for name in self.names:
            namespace = self.namespaces[name]
            self.settle(name, 10)
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)
            shutil.rmtree(Path("/etc/netns", namespace), ignore_errors=True)
        subprocess.run(["ip", "netns", "delete", self.switch], capture_output=True)


def _launcher() -> Path:
    return Path(sys.executable).parent / "mpiexec"


def _ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, text=True)


def _wait(condition, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        time.sleep(0.1)


@contextlib.contextmanager
def hosts(folder: Path, count: int = 2, hidden: tuple[Path, ...] = ()) -> Iterator[Hosts]:
    """`count` hosts made for the duration of the context, always removed after it."""
    made = Hosts(folder, count, hidden)
    try:
        made.build()
        yield made
    finally:
        made.tear_down()

"""How much of the memory the service may use is in use: the container's, not the host's.

In Docker or Kubernetes the kernel kills the process at its cgroup's limit, whatever the host
has free: a host at 7 % can hold a container at 99 %. So the cgroup is read when it sets a limit
(v2: `memory.max`, v1: `memory.limit_in_bytes`), with the kernel's working set as the use (what
the OOM killer and the kubelet count: the usage less the inactive page cache), and the host
(psutil) otherwise. The reading says which it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

MemorySource = Literal["cgroup", "host"]
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class MemoryUse:
    used_bytes: int
    limit_bytes: int
    source: MemorySource

    @property
    def used_ratio(self) -> float:
        return self.used_bytes / self.limit_bytes if self.limit_bytes else 0.0


def memory_use(
    cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP
) -> MemoryUse:
    """The cgroup's use and limit when it has one below the host's memory, else the host's.
    Blocking file reads: call it through `asyncio.to_thread`."""
    host = psutil.virtual_memory()
    limited = _cgroup_v2(cgroup_root, proc_self_cgroup) or _cgroup_v1(cgroup_root)
    if limited is not None and 0 < limited[1] < host.total:
        used, limit = limited
        return MemoryUse(used, limit, "cgroup")
    return MemoryUse(host.total - host.available, host.total, "host")


def _cgroup_v2(root: Path, proc_self_cgroup: Path) -> tuple[int, int] | None:
    if not (root / "cgroup.controllers").exists():
        return None
    relative = _v2_path(proc_self_cgroup)
    # The process's own group, then each parent up to the root: a limit may sit on a parent
    # (a pod's limit above its containers'), and in a container the group is often the root.
    directory = root / relative.lstrip("/")
    for candidate in [directory, *directory.parents]:
        if not candidate.is_relative_to(root):
            break
        limit = _read(candidate / "memory.max")
        current = _read(candidate / "memory.current")
        if limit is not None and limit != "max" and current is not None:
            inactive = _stat(candidate / "memory.stat", "inactive_file")
            return max(int(current) - inactive, 0), int(limit)
    return None


def _cgroup_v1(root: Path) -> tuple[int, int] | None:
    directory = root / "memory"
    limit = _read(directory / "memory.limit_in_bytes")
    usage = _read(directory / "memory.usage_in_bytes")
    if limit is None or usage is None:
        return None
    inactive = _stat(directory / "memory.stat", "total_inactive_file")
    return max(int(usage) - inactive, 0), int(limit)


def _v2_path(proc_self_cgroup: Path) -> str:
    text = _read(proc_self_cgroup) or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return "/"


def _stat(path: Path, key: str) -> int:
    for line in (_read(path) or "").splitlines():
        name, _, number = line.partition(" ")
        if name == key and number.isdigit():
            return int(number)
    return 0


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None

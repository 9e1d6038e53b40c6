"""The multi-worker cluster a process belongs to, read from ``TF_CONFIG`` without TensorFlow.

``--strategy multiworker`` trains with ``tf.distribute.MultiWorkerMirroredStrategy`` over
the processes that ``TF_CONFIG`` names (the variable every TF-aware launcher, Kubernetes
operator and cluster manager sets). It is read and checked here, before TensorFlow is
imported, so that a malformed one is refused in one line at once; ``compress launch``
writes it for local workers (:func:`local_tf_config`).

Example:

>>> import json, os
>>> os.environ["TF_CONFIG"] = json.dumps({
...     "cluster": {"worker": ["127.0.0.1:20001", "127.0.0.1:20002"]},
...     "task": {"type": "worker", "index": 1}})
>>> info = read_tf_config()
>>> info.num_workers, info.index, info.is_chief, info.address
(2, 1, False, '127.0.0.1:20002')
>>> del os.environ["TF_CONFIG"]
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket

from compress.errors import CompressError

# Seconds a worker waits for every worker of the cluster to connect before it gives up in
# one line (an unreachable address, a worker that never started). COMPRESS_CONNECT_TIMEOUT
# changes it.
CONNECT_TIMEOUT = 120.0
_JOBS = ("chief", "worker")


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    """This process's place in the cluster of ``TF_CONFIG``.

    Args:
        tasks: list of ``(type, index, "host:port")``, chief first, then the workers.
        task_type: str. ``"chief"`` or ``"worker"``.
        index: int. This task's index within its type.
    """

    tasks: tuple
    task_type: str
    index: int

    @property
    def num_workers(self) -> int:
        """The processes that train (the chief and the workers)."""
        return len(self.tasks)

    @property
    def is_chief(self) -> bool:
        """The task that writes: the ``chief``, or ``worker`` 0 when there is no chief."""
        if any(t == "chief" for t, _, _ in self.tasks):
            return self.task_type == "chief"
        return self.index == 0

    @property
    def address(self) -> str:
        return next(a for t, i, a in self.tasks if (t, i) == (self.task_type, self.index))

    @property
    def name(self) -> str:
        """``worker 1`` (or ``chief``), as messages name a task."""
        return "chief" if self.task_type == "chief" else f"worker {self.index}"


def connect_timeout() -> float:
    """Seconds to wait for the cluster to connect (``COMPRESS_CONNECT_TIMEOUT``, default
    120)."""
    text = os.environ.get("COMPRESS_CONNECT_TIMEOUT")
    if not text:
        return CONNECT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise CompressError(f"COMPRESS_CONNECT_TIMEOUT '{text}': must be a number of "
                            "seconds above 0")
    return value


def read_tf_config(environ=None) -> ClusterInfo:
    """Parse and check ``TF_CONFIG``; one line naming what is wrong.

    Refused: no ``TF_CONFIG`` (``--strategy multiworker`` needs one, or ``compress
    launch``), text that is not JSON, a missing ``cluster`` or ``task``, a task type that
    is not ``chief`` or ``worker``, an index outside its list, an address that is not
    ``host:port``.
    """
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG")
    if not text:
        raise CompressError("--strategy multiworker needs TF_CONFIG (the cluster's workers and "
                            "this process's task); set it on every worker, or run "
                            "'compress launch --workers N COMMAND ...' on one machine")
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise CompressError(f"TF_CONFIG is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CompressError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise CompressError("TF_CONFIG has no 'cluster' (a mapping of 'worker' to its "
                            "'host:port' addresses)")
    if not isinstance(task, dict):
        raise CompressError("TF_CONFIG has no 'task' (this process's {'type': 'worker', "
                            "'index': N})")
    tasks = []
    for job in _JOBS:
        addresses = cluster.get(job, [])
        if not isinstance(addresses, list):
            raise CompressError(f"TF_CONFIG cluster '{job}' must be a list of 'host:port'")
        for i, address in enumerate(addresses):
            _split_address(address, f"TF_CONFIG cluster {job}[{i}]")
            tasks.append((job, i, address))
    others = sorted(set(cluster) - set(_JOBS))
    if others:
        raise CompressError(f"TF_CONFIG cluster '{others[0]}': only 'chief' and 'worker' tasks "
                            "train here")
    if not tasks:
        raise CompressError("TF_CONFIG cluster lists no workers")
    if sum(1 for t, _, _ in tasks if t == "chief") > 1:
        raise CompressError("TF_CONFIG cluster has more than one chief")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in _JOBS:
        raise CompressError(f"TF_CONFIG task type {task_type!r}: must be 'worker' or 'chief'")
    if not isinstance(index, int) or isinstance(index, bool):
        raise CompressError(f"TF_CONFIG task index {index!r}: must be an integer")
    count = len(cluster.get(task_type, []))
    if not 0 <= index < count:
        raise CompressError(f"TF_CONFIG task index {index} is out of range: the cluster has "
                            f"{count} {task_type} address{'es' if count != 1 else ''}")
    addresses = [a for _, _, a in tasks]
    if len(set(addresses)) != len(addresses):
        raise CompressError("TF_CONFIG cluster names an address twice")
    return ClusterInfo(tuple(tasks), task_type, index)


def _split_address(address, where: str) -> tuple[str, int]:
    if not isinstance(address, str) or ":" not in address:
        raise CompressError(f"{where} {address!r}: must be 'host:port'")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CompressError(f"{where} {address!r}: must be 'host:port' with a port 1-65535")
    return host.strip("[]"), int(port)


def check_own_port(info: ClusterInfo) -> None:
    """Refuse, before any work, a ``TF_CONFIG`` whose address for this task is a port
    another program holds (the worker's server could not start), or a host this machine
    cannot resolve."""
    host, port = _split_address(info.address, "TF_CONFIG")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (OSError, UnicodeError) as exc:
        raise CompressError(f"TF_CONFIG {info.name} address {info.address}: unknown host "
                            f"({exc})") from exc
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError as exc:
            raise CompressError(f"TF_CONFIG {info.name} address {info.address}: port {port} "
                                f"is already in use ({exc.strerror}); choose another port"
                                ) from exc


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that are free on ``host`` now (held together while
    they are picked, so they differ)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def local_tf_config(ports: list[int], index: int, host: str = "127.0.0.1") -> str:
    """The ``TF_CONFIG`` of local worker ``index`` among workers on ``ports`` (worker 0 is
    the chief).

    Example:

    >>> json.loads(local_tf_config([5000, 5001], 1))["task"]
    {'type': 'worker', 'index': 1}
    """
    return json.dumps({"cluster": {"worker": [f"{host}:{p}" for p in ports]},
                       "task": {"type": "worker", "index": int(index)}})

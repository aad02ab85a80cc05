"""A real multi-node Ray cluster on one machine: a head and worker nodes, each its own
`ray start --block` process with its own CPUs, GPUs (declared) and custom resources.

    python -m tools.ray_cluster up   --dir runs/.cluster [--workers 2] [--cpus 1] [--gpus 0]
    python -m tools.ray_cluster down --dir runs/.cluster
    python -m tools.ray_cluster status --dir runs/.cluster

The cluster keeps Ray's token authentication, as a real one should: its nodes and its
drivers run with ``RAY_AUTH_MODE=token`` and share the token Ray keeps in
``~/.ray/auth_token`` (made by ``ray get-auth-token --generate`` when missing; a local
``ray.init()`` makes and uses the same file). A driver in token mode cannot talk to a
cluster without it, and a process that once started a local Ray is in token mode for good.

`up` prints what to export (``RAY_ADDRESS=127.0.0.1:PORT RAY_AUTH_MODE=token``) and records every
node's process in ``<dir>/cluster.json``; `down` ends exactly those processes and their
children, by id. It never runs `ray stop`, which would end every Ray process of this user
on the machine (other people's clusters too).

Nodes are separate raylets with separate object stores, so a shard's input table really
travels between processes through Ray's object transfer, and killing one node's raylet
is a real node loss (``Cluster.kill_raylet``). The head offers no CPU, so no shard task
runs there: work lands only on the worker nodes. Each worker node ``i`` offers the custom
resource ``node_<i>`` (1 unit), which tests use to tell nodes apart.

Every wait is bounded: a node that does not join within ``start_timeout_s`` ends the
start with its log's tail in the error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
# Fast node-death detection (the GCS's health check of each raylet): a lost node is noticed
# in a few seconds rather than the default ~30 s, so a test of node loss stays short.
HEALTH_CHECK_ENV = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "4",
}

# What every node and driver of the cluster runs with (see the module's docstring).
DRIVER_ENV = {"RAY_AUTH_MODE": "token"}


class ClusterError(RuntimeError):
    pass


def ensure_auth_token(timeout_s: float) -> None:
    """Ray's own command makes ``~/.ray/auth_token`` if there is none (it prints the token:
    kept off the terminal)."""
    try:
        out = subprocess.run([RAY, "get-auth-token", "--generate"], capture_output=True,
                             text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"`ray get-auth-token --generate` did not answer in {timeout_s:.0f} s") from None
    if out.returncode != 0:
        raise ClusterError(f"`ray get-auth-token --generate` failed: {out.stderr.strip()[-500:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    pid: int  # the `ray start --block` process; its children are the node's raylet etc.
    log: str
    cpus: float
    gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class Cluster:
    address: str
    temp_dir: str
    nodes: list[Node] = field(default_factory=list)

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def start(cls, workers: int = 2, cpus: float = 1, gpus: int = 0, head_cpus: float = 0,
              object_store_mb: int = 200, temp_dir: str | None = None,
              start_timeout_s: float = 90.0) -> Cluster:
        """A head and ``workers`` worker nodes, all joined (or a ClusterError, everything
        started so far ended)."""
        if not Path(RAY).exists():
            raise ClusterError(f"the ray command is not installed beside {sys.executable}")
        # Short: Ray's Unix socket paths live under it and must stay under 108 bytes.
        tmp = temp_dir or tempfile.mkdtemp(prefix="dpray-", dir="/tmp")
        port = free_port()
        c = cls(address=f"127.0.0.1:{port}", temp_dir=tmp)
        try:
            ensure_auth_token(start_timeout_s)
            c._start_node("head", ["--head", f"--port={port}", "--include-dashboard=false",
                                   f"--ray-client-server-port={free_port()}"],
                          head_cpus, 0, {"head": 1}, object_store_mb, start_timeout_s)
            for i in range(workers):
                c.add_node(f"node_{i}", cpus=cpus, gpus=gpus, object_store_mb=object_store_mb,
                           start_timeout_s=start_timeout_s)
        except BaseException:
            c.stop()
            raise
        return c

    def add_node(self, name: str, cpus: float = 1, gpus: int = 0, object_store_mb: int = 200,
                 resources: dict[str, float] | None = None, start_timeout_s: float = 90.0) -> Node:
        """Join one more worker node (custom resource ``name``: 1 unit, plus ``resources``)."""
        res = {name: 1, **(resources or {})}
        return self._start_node(name, [f"--address={self.address}"], cpus, gpus, res,
                                object_store_mb, start_timeout_s)

    def _start_node(self, name, role_args, cpus, gpus, resources, object_store_mb,
                    timeout_s) -> Node:
        log = Path(self.temp_dir) / f"{name}.out"
        cmd = [RAY, "start", "--block", *role_args, "--node-ip-address=127.0.0.1",
               f"--num-cpus={cpus}", f"--num-gpus={gpus}",
               f"--resources={json.dumps(resources)}",
               f"--object-store-memory={object_store_mb * 1024 * 1024}",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}",
               f"--metrics-export-port={free_port()}",
               "--disable-usage-stats"]
        if "--head" in role_args:
            cmd.append(f"--temp-dir={self.temp_dir}")
        env = {**os.environ, **HEALTH_CHECK_ENV, **DRIVER_ENV, "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, stdin=subprocess.DEVNULL)
        node = Node(name=name, pid=proc.pid, log=str(log), cpus=cpus, gpus=gpus,
                    resources=resources)
        self.nodes.append(node)
        self._wait_joined(node, proc, timeout_s)
        return node

    def _wait_joined(self, node: Node, proc: subprocess.Popen, timeout_s: float) -> None:
        """Until the GCS lists the node's custom resource, the process died, or time ran out."""
        key = next(iter(node.resources))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(f"ray node {node.name} exited with {proc.returncode}:\n"
                                   f"{self.log_tail(node)}")
            if key in self._alive_resources():
                return
            time.sleep(0.5)
        raise ClusterError(f"ray node {node.name} did not join within {timeout_s:.0f} s:\n"
                           f"{self.log_tail(node)}")

    def _alive_resources(self) -> set[str]:
        """Resource names of the live nodes, asked of the GCS in a subprocess (the caller's
        own process keeps no Ray connection; a CLI call is bounded by a timeout)."""
        code = ("import json, ray\n"
                f"ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False)\n"
                "print(json.dumps(sorted({k for n in ray.nodes() if n['Alive'] "
                "for k in n['Resources']})))\n")
        try:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 timeout=60, env={**{k: v for k, v in os.environ.items()
                                                     if k != "RAY_ADDRESS"}, **DRIVER_ENV})
        except subprocess.TimeoutExpired:
            return set()
        if out.returncode != 0:
            return set()
        # Ray may print warnings on stdout too (a busy machine's "lagging heartbeats"):
        # the answer is the last line that is a JSON list.
        for line in reversed(out.stdout.strip().splitlines()):
            if line.startswith("["):
                try:
                    return set(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return set()

    def stop(self, timeout_s: float = 20.0) -> None:
        """End every node this cluster started (and their children), by process id."""
        for node in reversed(list(self.nodes)):
            self.stop_node(node, timeout_s)
        self.nodes.clear()

    def stop_node(self, node: Node, timeout_s: float = 20.0) -> None:
        procs = _tree(node.pid)
        for p in procs[:1]:  # `ray start --block` ends its node's processes on SIGTERM
            _signal(p, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        for p in alive:
            _signal(p, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
        if node in self.nodes:
            self.nodes.remove(node)

    def kill_raylet(self, node: Node) -> int:
        """SIGKILL the node's raylet (a node lost mid-work); returns its pid."""
        for p in _tree(node.pid):
            try:
                if p.name() == "raylet":
                    p.kill()
                    return p.pid
            except psutil.NoSuchProcess:
                continue
        raise ClusterError(f"node {node.name} has no raylet process")

    def node_id(self, node: Node) -> str | None:
        """The Ray node id of a node this cluster started (from its raylet's command line)."""
        for p in _tree(node.pid):
            try:
                if p.name() == "raylet":
                    for arg in p.cmdline():
                        if arg.startswith("--node_id="):
                            return arg.split("=", 1)[1]
            except psutil.NoSuchProcess:
                continue
        return None

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def log_tail(self, node: Node, chars: int = 2000) -> str:
        try:
            return Path(node.log).read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    # ---------------------------------------------------------------- the record file

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "cluster.json"
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> Cluster:
        path = folder / "cluster.json"
        if not path.is_file():
            raise ClusterError(f"no cluster recorded in {folder} (run `make cluster-up` first)")
        data = json.loads(path.read_text())
        return cls(address=data["address"], temp_dir=data["temp_dir"],
                   nodes=[Node(**n) for n in data["nodes"]])


def _tree(pid: int) -> list[psutil.Process]:
    """The process and its descendants (those still running)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.ray_cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--dir", default="runs/.cluster", help="where cluster.json is kept")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus", type=float, default=1, help="CPUs per worker node")
    p.add_argument("--gpus", type=int, default=0, help="GPUs each worker node declares")
    p.add_argument("--object-store-mb", type=int, default=256)
    args = p.parse_args(argv)
    folder = Path(args.dir)
    if args.action == "up":
        if (folder / "cluster.json").is_file():
            print(f"a cluster is already recorded in {folder}; `make cluster-down` first",
                  file=sys.stderr)
            return 2
        c = Cluster.start(args.workers, args.cpus, args.gpus,
                          object_store_mb=args.object_store_mb)
        c.save(folder)
        print(f"ray cluster up: head + {args.workers} worker node(s); logs in {c.temp_dir}")
        print(f"export RAY_ADDRESS={c.address} RAY_AUTH_MODE=token")
        return 0
    try:
        c = Cluster.load(folder)
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.action == "status":
        for n in c.nodes:
            state = "up" if psutil.pid_exists(n.pid) else "gone"
            print(f"{n.name:<8} {state:<5} pid {n.pid}  cpus {n.cpus}  gpus {n.gpus}  {n.log}")
        print(f"RAY_ADDRESS={c.address} RAY_AUTH_MODE=token")
        return 0
    c.stop()
    shutil.rmtree(c.temp_dir, ignore_errors=True)
    (folder / "cluster.json").unlink()
    print("ray cluster down")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""kubectl through certgate against kubectl straight to the API server, in one run.

    .venv/bin/python bench/kube_proxy.py [--size 256M] [--rounds 3] [--calls 30]
                                         [--kube-in-proxy] [--record]
                                         [--split both|shared|apart]

The API server is the test stand-in (tests/support/kube_standin.py: aiohttp in a thread
of this process); certgate runs auth + proxy and a kube service as real processes. Both
paths use the same kubectl 1.37:

  (a) certgate: kubectl -> proxy (3026, user cert from `cgsh kube credentials`) -> kube
      service (impersonation) -> API server
  (b) direct:   kubectl -> API server (bearer token)

`--kube-in-proxy` runs the kube service in the proxy's process (`certgate start --roles
auth,proxy,kube`): the proxy then hands it kubectl's calls in-process, without the two
TLS legs between them. `--record` gives the user `record_session.k8s: strict`, so the
exec is recorded as it runs.

Measured, the paths taking turns:
  - `kubectl get pods -n dev`: wall time of the whole command, p50 and p99 of `--calls`.
    Through certgate each kubectl run also starts the exec credential plugin (a Python
    process); the per-request latency on a kept-alive connection is printed apart
    (`GET /api/v1/namespaces/dev/pods`, same client, p50/p99).
  - `kubectl logs` of a `--size` log, and `kubectl exec -- cat` of a `--size` file:
    MB/s from kubectl's stdout, median of `--rounds`.
Targets (printed, never asserted): latency <= 1.3x direct, throughput >= 0.8x direct.
With each throughput figure, the CPU seconds each process spent per run (`/proc`): the
proxy, the kube service, this process (the stand-in) and kubectl; `--only` picks parts.

Where the processes run during the throughput runs (`--split`; the layouts take turns,
round by round, and each prints its own figures):
  shared  every process on any core: kubectl, the stand-in, `cat` and certgate's
          processes share the two cores. A relay's CPU comes straight off the ends'
          (the direct path already keeps both cores busy), so this measures what
          certgate costs a machine that also runs kubectl and the API server.
  apart   certgate's processes (auth+proxy, the kube service) on the first core;
          kubectl, the stand-in and `cat` on the other, on both paths: certgate's hop
          has a core of its own, as the proxy has a machine of its own in a
          deployment, and the ends get the same one core on both paths. This measures
          whether certgate's hop holds the stream back.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import procs  # noqa: E402
from tests.support.cluster import BIN, Cluster, User  # noqa: E402
from tests.support.kube_cluster import KUBECTL, KubeSetup  # noqa: E402
from tests.support.kube_standin import ADMIN_TOKEN, Grant, KubeStandin  # noqa: E402
from tests.support.net import free_port  # noqa: E402

ROLE = """
kind: role
version: v1
metadata: {name: bench-kube}
spec:
  allow:
    kubernetes_labels: {"*": "*"}
    kubernetes_groups: ["system:masters"]
    rules: [{resources: [session], verbs: [list, read]}]
  options: {record_session: {k8s: RECORD}}
"""


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1:].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_now(pids: dict[str, int]) -> dict[str, float]:
    usage = {name: cpu_seconds(pid) for name, pid in pids.items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    usage["kubectl"] = children.ru_utime + children.ru_stime
    return usage


def run_kubectl(env: dict[str, str], args: list[str]) -> tuple[float, int]:
    """(seconds, bytes of stdout) of one kubectl run; output read and dropped."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [str(KUBECTL), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert process.stdout is not None
    total = 0
    while chunk := process.stdout.read(1 << 20):
        total += len(chunk)
    _, err = process.communicate()
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {err.decode()[-400:]}")
    return elapsed, total


def request_latency(
    host: str, port: int, path: str, context: ssl.SSLContext, headers: dict[str, str], n: int
) -> list[float]:
    conn = http.client.HTTPSConnection(host, port, context=context)
    times = []
    for _ in range(n + 3):
        start = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
        times.append(time.perf_counter() - start)
    conn.close()
    return times[3:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument(
        "--only", default="latency,logs,exec", help="comma-separated: latency, logs, exec"
    )
    parser.add_argument(
        "--kube-in-proxy", action="store_true", help="the kube service in the proxy's process"
    )
    parser.add_argument("--record", action="store_true", help="record_session.k8s: strict")
    parser.add_argument(
        "--split", choices=("both", "shared", "apart"), default="both",
        help="where the processes run during the throughput runs (see the top of this file)",
    )  # fmt: skip
    args = parser.parse_args()
    size = parse_size(args.size)

    with tempfile.TemporaryDirectory(prefix="bench-kube-") as tmp:
        workdir = Path(tmp)
        big = workdir / "big.bin"
        with big.open("wb") as out:
            line = (b"x" * 99) + b"\n"
            block = line * 10000
            written = 0
            while written < size:
                out.write(block)
                written += len(block)
        standin = KubeStandin(workdir)
        standin.grants.append(Grant(("group:system:masters",)))
        standin.pods[("dev", "web")].log_file = big
        standin.start()
        cluster = Cluster(workdir / "certgate")
        if args.kube_in_proxy:
            cluster.roles = "auth,proxy,kube"
            kubeconfig = standin.kubeconfig(workdir / "standin.kubeconfig")
            listen = f"127.0.0.1:{free_port()}"
            cluster.extra_args = [
                "--kubeconfig", str(kubeconfig), "--kube-cluster-name", "dev-cluster",
                "--kube-listen", listen,
                # The tests' 1 s heartbeat (a 1.5 s TTL) lapses when a loaded machine
                # starves the process that also relays the streams.
                "--heartbeat-interval", "5s",
            ]  # fmt: skip
        cluster.start()
        try:
            setup = KubeSetup(cluster, standin, cluster.kube_proxy_port)
            if not args.kube_in_proxy:
                setup.start_kube_service()
            mode = "strict" if args.record else "best_effort"
            (workdir / "role.yaml").write_text(ROLE.replace("RECORD", mode))
            cluster.cgctl("create", str(workdir / "role.yaml"))
            user = cluster.add_user("bench", roles="bench-kube")
            cluster.login(user)
            for _ in range(100):
                if "dev-cluster" in cluster.cgsh(user, "kube", "ls").stdout:
                    break
                time.sleep(0.1)
            assert setup.kube_login(user).returncode == 0
            measure(setup, user, standin, workdir, big, size, args)
        finally:
            cluster.stop()
            standin.stop()


def measure(
    setup: KubeSetup,
    user: User,
    standin: KubeStandin,
    workdir: Path,
    big: Path,
    size: int,
    args: argparse.Namespace,
) -> None:
    direct_config = standin.kubeconfig(workdir / "direct.kubeconfig")
    envs = {
        "certgate": setup.env(user),
        "direct": {**os.environ, "KUBECONFIG": str(direct_config)},
    }
    print(f"kubectl through certgate vs straight to the API server stand-in; size {size >> 20} MiB")
    where = "in the proxy's process" if args.kube_in_proxy else "in a process of its own"
    recorded = "recorded (strict)" if args.record else "not recorded"
    print(f"kube service {where}; exec {recorded}")
    print("(the figures depend on the machine's load: run it on a quiet one to compare)")
    parts = set(args.only.split(","))
    uploaded = 0
    if "latency" in parts:
        measure_latency(setup, user, standin, workdir, envs, args)
    assert setup.cluster.process is not None
    pids = {"proxy": setup.cluster.process.pid}
    if setup.service is not None:  # else it runs in the proxy's process
        pids["kube"] = setup.service.pid
    pids["stand-in"] = os.getpid()
    splits = ["shared", "apart"] if args.split == "both" else [args.split]
    certgate_pids = [pid for name, pid in pids.items() if name != "stand-in"]
    for part, title, kubectl_args in (
        ("logs", "kubectl logs", ["-n", "dev", "logs", "web"]),
        ("exec", "kubectl exec -- cat", ["-n", "dev", "exec", "web", "--", "cat", str(big)]),
    ):
        if part not in parts:
            continue
        paths = [(split, name) for split in splits for name in envs]
        rates: dict[tuple[str, str], list[float]] = {path: [] for path in paths}
        upload: dict[str, float] = {}
        cpu: dict[tuple[str, str], dict[str, float]] = {path: {} for path in paths}
        for _ in range(args.rounds):
            for split, name in paths:
                place(split, certgate_pids)
                before = cpu_now(pids)
                seconds, received = run_kubectl(envs[name], kubectl_args)
                after = cpu_now(pids)
                if args.record and name == "certgate" and part == "exec":
                    # The recording's upload runs after the session: not into the next
                    # run; its CPU is printed apart (cgsh's, to ask, is left out).
                    uploaded += 1
                    wait_for_recordings(setup, user, uploaded)
                    done = cpu_now(pids)
                    for proc in pids:
                        upload[proc] = upload.get(proc, 0.0) + (done[proc] - after[proc]) / (
                            args.rounds * len(splits)
                        )
                assert received >= size, (name, received)
                rates[split, name].append(received / seconds / 1e6)
                for proc, value in after.items():
                    spent = (value - before[proc]) / args.rounds
                    cpu[split, name][proc] = cpu[split, name].get(proc, 0.0) + spent
        place("shared", certgate_pids)
        for split in splits:
            print(
                f"\n{title} of {size >> 20} MiB, MB/s (median of {args.rounds}), {LAYOUTS[split]}:"
            )
            for name in envs:
                values = rates[split, name]
                runs = ", ".join(f"{v:.0f}" for v in values)
                spent = "  ".join(f"{proc} {value:.2f}" for proc, value in cpu[split, name].items())
                print(f"  {name:9} {statistics.median(values):8.1f}   runs {runs}")
                print(f"  {'':9} CPU s per run: {spent}")
            share = statistics.median(rates[split, "certgate"]) / statistics.median(
                rates[split, "direct"]
            )
            print(f"  certgate/direct: {share:.2f}x (target >= 0.8x)")
        if upload:
            spent = "  ".join(f"{proc} {value:.2f}" for proc, value in upload.items())
            print(f"  after each recorded exec, the recording's upload, CPU s: {spent}")


LAYOUTS = {
    "shared": "every process on either core",
    "apart": "certgate on core 0; kubectl, the stand-in and cat on core 1",
}


def place(split: str, certgate_pids: list[int]) -> None:
    """Pins for a run in `split` (see the top of this file). This process holds the
    stand-in's threads and starts kubectl, which inherits its affinity."""
    if split == "shared":
        procs.pin(certgate_pids, procs.ALL)
        own = procs.ALL
    else:
        certgate_cores, ends_cores = procs.core_split()
        procs.pin(certgate_pids, certgate_cores)
        own = ends_cores
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), own)
        except OSError:
            pass  # a thread gone meanwhile


def wait_for_recordings(setup: KubeSetup, user: User, count: int) -> None:
    for _ in range(600):
        out = setup.cluster.cgsh(user, "recordings", "ls", "--format=json").stdout
        if len(json.loads(out)) >= count:
            return
        time.sleep(0.1)
    raise RuntimeError(f"fewer than {count} recordings after 60 s")


def measure_latency(
    setup: KubeSetup,
    user: User,
    standin: KubeStandin,
    workdir: Path,
    envs: dict[str, dict[str, str]],
    args: argparse.Namespace,
) -> None:
    latency: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(args.calls):
        for name, env in envs.items():
            latency[name].append(run_kubectl(env, ["get", "pods", "-n", "dev"])[0])
    print("\n`kubectl get pods -n dev` (whole command), ms:")
    for name, values in latency.items():
        p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
        print(f"  {name:9} p50 {p50:7.1f}   p99 {p99:7.1f}")
    ratio = percentile(latency["certgate"], 0.5) / percentile(latency["direct"], 0.5)
    print(f"  certgate/direct p50: {ratio:.2f}x (target <= 1.3x)")

    # One kept-alive client, per request: what certgate's hops add, without process starts.
    creds = json.loads(
        subprocess.run(
            [str(BIN / "cgsh"), "kube", "credentials"], capture_output=True, text=True,
            env=setup.env(user), check=True,
        ).stdout
    )["status"]  # fmt: skip
    (workdir / "u.crt").write_text(creds["clientCertificateData"])
    (workdir / "u.key").write_text(creds["clientKeyData"])
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    user_context = ssl.create_default_context()
    user_context.check_hostname = False
    user_context.verify_mode = ssl.CERT_NONE
    user_context.load_cert_chain(str(workdir / "u.crt"), str(workdir / "u.key"))
    path = "/api/v1/namespaces/dev/pods"
    via = request_latency(
        "127.0.0.1", setup.kube_proxy_port, "/k8s/dev-cluster" + path, user_context, {},
        args.calls * 3,
    )  # fmt: skip
    straight = request_latency(
        "127.0.0.1", standin.port, path, insecure, {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        args.calls * 3,
    )  # fmt: skip
    print("\nGET /api/v1/namespaces/dev/pods on a kept-alive connection, ms:")
    for name, values in (("certgate", via), ("direct", straight)):
        p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
        print(f"  {name:9} p50 {p50:7.2f}   p99 {p99:7.2f}")


if __name__ == "__main__":
    main()

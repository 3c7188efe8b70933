"""`python -m benchmarks.docker` (make bench-docker): build the zoo's image from scratch in a private Docker
daemon, train 5 steps in it, read a scalar back from its TensorBoard, and write docs/benchmarks/docker.md
(image size, build time). tests/docker/test_image.py (make test-docker) runs the same steps as a test.

Built for machines that reach Debian's packages and PyPI but no image registry (CI): docker.io and
debootstrap come from apt-get where missing; the base image is Debian bookworm with its Python 3.11, made
by debootstrap + `docker import` (kept as a tarball under build/docker/ between runs); the daemon is our
own (private socket and data root in a temporary folder, overlay2 storage or vfs where overlay2 is
refused, no iptables, no bridge), stopped by its pid and its data root removed, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "docker"
SUITE = "bookworm"
# python3-venv brings ensurepip, which the Dockerfile's venv needs; python3-pip is what the brief of a
# "Python image" means on Debian. ca-certificates: pip and apt over https inside the build.
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
BASE_TAR = BUILD / f"base-{SUITE}-py311.tar"
BASE_TAG = f"zoo-base:{SUITE}-py311"
MIRROR = "http://deb.debian.org/debian"
IMAGE = "zoo:docker-test"
# The container user when the invoking user is root: a uid that is neither root nor the image's own
# `zoo` (1000), so the test shows that `--user` alone decides who owns the outputs.
STAND_IN_UID = 4242
TRAIN_ARGS = ("trainer.max_steps=5", "trainer.limit_val_batches=2")


def sh(cmd: list[str], *, env: dict | None = None, timeout: float, log: Path | None = None, **kw):
    """Run `cmd` (bounded by `timeout`), its output appended to `log` when given; raise on failure."""
    if log is None:
        return subprocess.run(cmd, env=env, timeout=timeout, check=True, **kw)
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        try:
            return subprocess.run(cmd, env=env, timeout=timeout, check=True, stdout=out, stderr=out, **kw)
        except subprocess.CalledProcessError as err:
            tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
            raise RuntimeError(f"{cmd[:3]} failed ({err.returncode}); last lines of {log}:\n{tail}") from None


def why_not() -> str | None:
    """The one-line reason this machine cannot run the Docker check, or None."""
    have = shutil.which("dockerd") and shutil.which("docker") and shutil.which("debootstrap")
    if not have and not shutil.which("apt-get"):
        return "neither docker (dockerd, debootstrap) nor apt-get is available"
    if os.geteuid() != 0:
        return "needs root (apt-get, debootstrap and a private dockerd)"
    return None


def ensure_tools(log: Path) -> list[str]:
    """apt-get install what is missing of docker.io and debootstrap; returns the packages installed.

    While it runs, /usr/sbin/policy-rc.d refuses service starts (exit 101), so the package's own dockerd
    does not start; a policy-rc.d we created is removed afterwards, one that existed is left as it was.
    """
    need = [
        pkg
        for tool, pkg in (("dockerd", "docker.io"), ("debootstrap", "debootstrap"))
        if not shutil.which(tool)
    ]
    if not shutil.which("docker") and "docker.io" not in need:
        need.append("docker.io")
    if not need:
        return []
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text(
            "#!/bin/sh\n# written by zoo's benchmarks/docker.py while it installs packages\nexit 101\n"
        )
        policy.chmod(0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sh(["apt-get", "update", "-qq"], env=env, timeout=600, log=log)
        sh(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need],
            env=env,
            timeout=900,
            log=log,
        )
    finally:
        if created:
            policy.unlink(missing_ok=True)
    return need


def _unmount_under(path: Path) -> None:
    """Lazily unmount whatever a daemon left mounted below `path` (deepest first), so it can be removed."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(str(path) + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], check=False, capture_output=True)


# overlay2 where the kernel and the data root's file system allow it (seconds per build step); vfs, which
# works everywhere but copies the whole file system for every layer and container, otherwise.
STORAGE = tuple(os.environ.get("ZOO_DOCKER_STORAGE", "overlay2,vfs").split(","))


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _start_dockerd(root: Path, driver: str, out, timeout: float) -> tuple[subprocess.Popen, dict] | None:
    """dockerd with `driver` under `root`, up and using that driver; None (and stopped) when it is not."""
    sock = root / "docker.sock"
    cmd = [
        "dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
        "--pidfile", str(root / "docker.pid"), "--host", f"unix://{sock}",
        "--storage-driver", driver, "--iptables=false", "--bridge=none",
    ]  # fmt: skip
    root.mkdir(parents=True)
    proc = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}", DOCKER_BUILDKIT="0")
    env.pop("DOCKER_CONTEXT", None)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        info = subprocess.run(["docker", "info", "--format", "{{.Driver}}"], env=env, capture_output=True,
                              text=True, timeout=30)  # fmt: skip
        if info.returncode == 0:
            if info.stdout.strip() == driver:
                return proc, env
            break
        time.sleep(1)
    _stop(proc)
    _unmount_under(root)
    return None


@contextlib.contextmanager
def private_dockerd(log: Path, storage: tuple[str, ...] = STORAGE, timeout: float = 120) -> Iterator[dict]:
    """Start dockerd on a private socket and data root, with the first storage driver of `storage` that
    works; yield the environment that talks to it (its driver in ZOO_DOCKER_STORAGE).

    On the way out (also on failure): SIGTERM to the pid it started (SIGKILL after 60 s), and its
    temporary folder removed (gigabytes of layers).
    """
    tmp = Path(tempfile.mkdtemp(prefix="zoo-dockerd-"))
    out = open(log, "a")  # noqa: SIM115 (closed in finally, after the daemon)
    started = None
    try:
        for driver in storage:
            started = _start_dockerd(tmp / driver, driver, out, timeout)
            if started:
                break
        if not started:
            raise RuntimeError(
                f"dockerd did not come up with any of the storage drivers {storage}; see {log}"
            )
        proc, env = started
        yield dict(env, ZOO_DOCKER_STORAGE=driver)
    finally:
        if started:
            _stop(started[0])
        out.close()
        _unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def base_tarball(log: Path) -> tuple[Path, float | None]:
    """Debian bookworm + Python 3.11 as a root file system tarball, made once by debootstrap (seconds, or
    None when it was already under build/docker/)."""
    if BASE_TAR.exists():
        return BASE_TAR, None
    BUILD.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zoo-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        sh(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs), MIRROR],
           timeout=1200, log=log)  # fmt: skip
        # What Debian's slim images leave out too: apt's lists and caches (the Dockerfile runs apt only for
        # a base without Python), documentation, manual pages, translations. Half the size, and every
        # build step under vfs copies the whole file system.
        for junk in ("var/cache/apt", "var/lib/apt/lists"):  # the files; apt wants its folders
            for p in (rootfs / junk).rglob("*"):
                if p.is_file() and p.name != "lock":
                    p.unlink()
        for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale"):
            shutil.rmtree(rootfs / junk)
            (rootfs / junk).mkdir()
        part = BASE_TAR.with_suffix(".part")
        sh(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(part), "."], timeout=600, log=log)
        part.rename(BASE_TAR)
    return BASE_TAR, time.perf_counter() - start


def image_size(env: dict, image: str) -> int:
    out = sh(["docker", "image", "inspect", image, "--format", "{{.Size}}"], env=env, timeout=60,
             capture_output=True, text=True)  # fmt: skip
    return int(out.stdout.strip())


def build(env: dict, log: Path, image: str = IMAGE) -> dict:
    """Import the base and `make docker` on it; the timings and the image's size."""
    tar, debootstrap_s = base_tarball(log)
    sh(["docker", "import", "--change", 'CMD ["python3"]', str(tar), BASE_TAG], env=env, timeout=600, log=log)
    start = time.perf_counter()
    # The make target as a user runs it: wheelhouse (zoo wheel + the host pip's torch wheel) then build.
    sh(["make", "-C", str(ROOT), "docker", f"PYTHON={sys.executable}",
        f"DOCKER_BASE={BASE_TAG}", f"DOCKER_IMAGE={image}"], env=env, timeout=2400, log=log)  # fmt: skip
    build_s = time.perf_counter() - start
    return {"debootstrap_s": debootstrap_s, "build_s": build_s, "size": image_size(env, image),
            "base_size": image_size(env, BASE_TAG)}  # fmt: skip


PROBE = (
    "import json, torch, zoo, importlib.metadata as m;"
    "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'zoo_file': zoo.__file__,"
    "'direct_url': m.distribution('zoo').read_text('direct_url.json')}))"
)


def inspect_image(env: dict, image: str = IMAGE) -> dict:
    """The image's user, entry point and volumes (its config)."""
    cfg = json.loads(sh(["docker", "image", "inspect", image, "--format", "{{json .Config}}"], env=env,
                        timeout=60, capture_output=True, text=True).stdout)  # fmt: skip
    return {
        "user": cfg.get("User"),
        "entrypoint": cfg.get("Entrypoint"),
        "volumes": sorted(cfg.get("Volumes") or {}),
    }


def container_user() -> tuple[int, int]:
    """Who the container runs as: the invoking user; for root, a non-root stand-in (STAND_IN_UID)."""
    if os.getuid() != 0:
        return os.getuid(), os.getgid()
    return STAND_IN_UID, STAND_IN_UID


def train(env: dict, logs: Path, log: Path, image: str = IMAGE) -> tuple[Path, float]:
    """`zoo-train trainer.max_steps=5` in the image, offline, logs on a bind mount; the run folder, seconds."""
    uid, gid = container_user()
    logs.mkdir(parents=True, exist_ok=True)
    os.chown(logs, uid, gid)
    start = time.perf_counter()
    # No --rm: under vfs, removing a container deletes a whole copy of the image (minutes on a busy
    # machine); the daemon's data root goes at the end anyway.
    sh(["docker", "run", "--network", "none", "--user", f"{uid}:{gid}", "-v", f"{logs}:/zoo/logs",
        image, *TRAIN_ARGS], env=env, timeout=1200, log=log)  # fmt: skip
    seconds = time.perf_counter() - start
    runs = sorted((logs / "train" / "runs").glob("*"))
    if len(runs) != 1:
        raise RuntimeError(f"expected one run folder under {logs}/train/runs, found {runs}")
    return runs[0], seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensorboard_command(port: int) -> list[str]:
    """The compose file's TensorBoard service (entry point + command), bound to 127.0.0.1:`port`."""
    import yaml

    svc = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]["tensorboard"]
    cmd = [*svc["entrypoint"], *map(str, svc["command"])]
    cmd = ["--host" if a == "--bind_all" else a for a in cmd]
    cmd.insert(cmd.index("--host") + 1, "127.0.0.1")
    cmd[cmd.index("--port") + 1] = str(port)
    return cmd


def tensorboard_scalar(env: dict, logs: Path, log: Path, image: str = IMAGE, timeout: float = 240) -> dict:
    """Start the TensorBoard service on the logs (host network, 127.0.0.1, a free port), and read one scalar
    series back over HTTP; in the same container, how torch and the zoo are installed (PROBE). Kills the
    container it started, also on failure."""
    uid, gid = container_user()
    port = free_port()
    cmd = tensorboard_command(port)
    cid = sh(["docker", "run", "-d", "--network", "host", "--user", f"{uid}:{gid}", "-v", f"{logs}:/zoo/logs:ro",
              "--entrypoint", cmd[0], image, *cmd[1:]], env=env, timeout=120, capture_output=True,
             text=True).stdout.strip()  # fmt: skip
    base = f"http://127.0.0.1:{port}/data/plugin/scalars"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{base}/tags", timeout=10) as r:
                    tags = json.load(r)
                run = next((r for r, t in tags.items() if "val/loss" in t), None)
                if run:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                logs_out = subprocess.run(["docker", "logs", cid], env=env, capture_output=True, text=True)
                raise RuntimeError(
                    f"TensorBoard served no val/loss in {timeout:.0f} s:\n{logs_out.stderr[-2000:]}"
                )
            time.sleep(2)
        query = urllib.parse.urlencode({"run": run, "tag": "val/loss"})
        with urllib.request.urlopen(f"{base}/scalars?{query}", timeout=30) as r:
            points = json.load(r)  # [[wall_time, step, value], ...]
        probe = sh(["docker", "exec", cid, "python", "-c", PROBE], env=env, timeout=300, capture_output=True,
                   text=True).stdout  # fmt: skip
        return {
            "run": run,
            "port": port,
            "points": points,
            "probe": json.loads(probe.strip().splitlines()[-1]),
        }
    finally:
        # Killed, not removed (see train); dockerd's shutdown would stop it too.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(["docker", "kill", cid], env=env, capture_output=True, timeout=120)


def run_all(work: Path, storage: tuple[str, ...] = STORAGE) -> dict:
    """Every step, in a private daemon: tools, base, image, training, TensorBoard. Returns the measurements."""
    log = work / "docker.log"
    installed = ensure_tools(log)
    with private_dockerd(log, storage) as env:
        numbers = build(env, log)
        numbers["storage"] = env["ZOO_DOCKER_STORAGE"]
        numbers["image"] = inspect_image(env)
        logs = work / "logs"
        numbers["run_dir"], numbers["train_s"] = train(env, logs, log)
        numbers["tensorboard"] = tensorboard_scalar(env, logs, log)
        numbers["image"].update(numbers["tensorboard"].pop("probe"))
    numbers["installed"] = installed
    numbers["load"] = os.getloadavg()[2]
    return numbers


PAGE = ROOT / "docs" / "benchmarks" / "docker.md"
RESULTS = ROOT / "docs" / "benchmarks" / "docker.json"  # one row per storage driver, the page's source


def row(numbers: dict, total_s: float, command: str) -> dict:
    """What the page shows of one run, with its stamp."""
    from benchmarks.common import stamp

    return {
        **stamp(command),
        "torch": numbers["image"]["torch"],
        "size_gb": round(numbers["size"] / 1e9, 3),
        "base_gb": round(numbers["base_size"] / 1e9, 3),
        "build_min": round(numbers["build_s"] / 60, 1),
        "debootstrap_min": round(numbers["debootstrap_s"] / 60, 1) if numbers["debootstrap_s"] else None,
        "train_s": round(numbers["train_s"]),
        "total_min": round(total_s / 60, 1),
        "load15": round(numbers["load"], 1),
    }


def render(rows: dict[str, dict]) -> list[str]:
    """docs/benchmarks/docker.md from docker.json: one row per storage driver, each with its stamp."""
    from benchmarks.common import table

    cells = []
    for driver, r in sorted(rows.items()):
        deb = f"{r['debootstrap_min']} min" if r["debootstrap_min"] else "cached"
        goal = "met" if r["size_gb"] <= 2.5 else "missed"
        cells.append([driver, r["date"], f"**{r['size_gb']:.2f} GB** ({goal})", f"{r['base_gb']:.2f} GB",
                      f"{r['build_min']} min", deb, f"{r['train_s']} s", f"{r['total_min']} min", r["load15"] or "not recorded"])  # fmt: skip
    machines = sorted({f"{r['machine']}; torch in the image {r['torch']}" for r in rows.values()})
    own = [f"{d}: `{r['command']}`" for d, r in sorted(rows.items()) if r["command"] != "make bench-docker"]
    return [
        "## Docker image (CPU)",
        "",
        "- command: `make bench-docker` (`python -m benchmarks.docker [--storage vfs]`): in a private dockerd 20.10",
        f"  (legacy builder), `make docker DOCKER_BASE={BASE_TAG}`, then `zoo-train {' '.join(TRAIN_ARGS)}`",
        "  and the compose file's TensorBoard in the image; `make test-docker` runs the same steps",
        *([f"- commands of the rows: {'; '.join(own)}"] if own else []),
        f"- machine: {'; '.join(machines)}",
        "- dates: in the table",
        "",
        f"Goal: CPU image ≤ 2.5 GB (`docker image inspect` size, uncompressed). The base is Debian {SUITE} + its",
        "Python 3.11 by debootstrap (CI has no image registry; the default python:3.11-slim-bookworm base was not",
        'measured here). "make docker" is the wheelhouse (zoo wheel + the torch wheel the host\'s pip resolves: the CPU one)',
        "plus `docker build`, with the base already imported; its dependencies come from PyPI during the build.",
        "",
        *table(
            [
                "storage driver",
                "date",
                "image",
                "of which base",
                "make docker",
                "debootstrap (once, cached)",
                "train 5 steps",
                "whole check",
                "load (15 min)",
            ],
            cells,
        ),  # fmt: skip
        "",
        "vfs (the fallback where overlay2 is refused) copies the whole file system for every build step and",
        "container: its data root held about 11 GB at the end of the run, and deleting it is part of the whole",
        "check. The machine was shared with other jobs during these runs: the load column is the load average",
        "of its 2 cores over the 15 minutes before the run ended.",
    ]


PAGES = {"docker": render}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", default=",".join(STORAGE), help="storage drivers to try, in order")
    ap.add_argument("--no-page", action="store_true", help="measure only; leave docs/benchmarks/docker.md")
    args = ap.parse_args()
    reason = why_not()
    if reason:
        raise SystemExit(f"benchmarks.docker: {reason}")
    BUILD.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zoo-docker-bench-") as tmp:
        start = time.perf_counter()
        numbers = run_all(Path(tmp), tuple(args.storage.split(",")))
        total = time.perf_counter() - start
        print(json.dumps({k: v for k, v in numbers.items() if k != "tensorboard"}, default=str, indent=1))
    if not args.no_page:
        from benchmarks.common import read_results, save

        rows = read_results(RESULTS)
        rows[numbers["storage"]] = row(
            numbers, total, "python -m benchmarks.docker " + shlex.join(sys.argv[1:])
        )
        save(RESULTS, rows, render)
        print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()

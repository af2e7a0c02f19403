"""Where the control plane's binaries are, and whether they are all there.

``hack/controlplane/build.sh`` builds etcd, the Kubernetes components, kwok and kubectl at the
versions pinned in ``hack/controlplane/versions.env``, which both it and this module read.
:mod:`.plugin` skips (or, in CI, fails) when files are missing; :mod:`.cli` refuses to start.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
VERSIONS_FILE = REPO / "hack" / "controlplane" / "versions.env"
REQUIRED_FILES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
    "kwok-stages.yaml",
)


def read_versions() -> dict[str, str]:
    """The pinned versions, from the one file that both this module and build.sh read."""
    lines = (line.strip() for line in VERSIONS_FILE.read_text().splitlines())
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def default_bin_dir() -> Path:
    """Where build.sh puts the binaries (keep in step with hack/controlplane/build.py)."""
    cache = os.environ.get("SLUICE_K8S_CACHE") or REPO / ".cache" / "k8s"
    return Path(cache) / read_versions()["KUBERNETES_VERSION"] / "bin"


def missing_files_message(bin_dir: Path) -> str | None:
    """Why the control plane cannot start here, or None when every binary is in place."""
    missing = [name for name in REQUIRED_FILES if not (bin_dir / name).is_file()]
    if not missing:
        return None
    return (
        f"control-plane files missing in {bin_dir} ({', '.join(missing)}): "
        "run hack/controlplane/build.sh (it needs Go ≥ 1.26 and takes minutes the first time)"
    )

"""A CycloneDX SBOM of the image's virtualenv, read from the image archive that `make image` wrote.

    python hack/image/sbom.py ARCHIVE SBOM.json

The archive is a docker-archive (what `docker save`, `podman save` and `buildah push
docker-archive:` write, and what `kind load image-archive` reads), so this works whichever tool
built it. The `*.dist-info` folders under /opt/sluice are taken out of its layers, and
`cyclonedx-py environment` (PyPI `cyclonedx-bom`) reads them. It asks the given interpreter for
its `sys.path` only, so the interpreter handed to it is a two-line script that answers with the
extracted site-packages: the image's own Python need not run here, nor match the host's version.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

VENV = "opt/sluice/"
REPO = pathlib.Path(__file__).resolve().parents[2]


def layers(archive: tarfile.TarFile) -> list[str]:
    """The image's layer members, bottom first (a docker-archive's manifest.json)."""
    manifest_file = archive.extractfile("manifest.json")
    assert manifest_file is not None
    manifest = json.load(manifest_file)
    names: list[str] = manifest[0]["Layers"]
    return names


def extract_metadata(archive_path: pathlib.Path, into: pathlib.Path) -> pathlib.Path:
    """Unpack the venv's distribution metadata into `into`; return its site-packages."""
    with tarfile.open(archive_path) as archive:
        for name in layers(archive):
            layer_file = archive.extractfile(name)
            assert layer_file is not None
            with tarfile.open(fileobj=layer_file, mode="r:*") as layer:
                wanted = [
                    m
                    for m in layer
                    if m.name.lstrip("./").startswith(VENV)
                    and ".dist-info" in m.name
                    and ".." not in m.name.split("/")
                    and (m.isfile() or m.isdir())
                ]
                # Only plain files and folders under opt/sluice/ are taken; the "data" filter
                # checks once more where this Python has it (3.11.4 on; not Debian's 3.11.2).
                if hasattr(tarfile, "data_filter"):
                    layer.extractall(into, members=wanted, filter="data")
                else:
                    layer.extractall(into, members=wanted)
    found = sorted(into.glob(VENV + "lib/python3*/site-packages"))
    if not found:
        raise SystemExit(f"sbom: no {VENV}lib/python3*/site-packages in {archive_path}")
    return found[0]


def main(archive_path: pathlib.Path, sbom_path: pathlib.Path) -> None:
    with tempfile.TemporaryDirectory(prefix="sluice-sbom-") as work:
        site = extract_metadata(archive_path, pathlib.Path(work))
        interpreter = pathlib.Path(work) / "python"
        interpreter.write_text(f"#!/bin/sh\necho '{json.dumps([str(site)])}'\n")
        interpreter.chmod(0o755)
        tool = shutil.which("cyclonedx-py", path=os.path.dirname(sys.executable))
        if tool is None:
            raise SystemExit("sbom: cyclonedx-py is missing (pip install cyclonedx-bom)")
        subprocess.run(
            [tool, "environment", "--pyproject", str(REPO / "pyproject.toml"),
             "--output-reproducible", "--of", "JSON", "-o", str(sbom_path), str(interpreter)],
            check=True,
        )  # fmt: skip
    components = json.loads(sbom_path.read_text()).get("components", [])
    print(f"sbom: {sbom_path} ({len(components)} components)")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))

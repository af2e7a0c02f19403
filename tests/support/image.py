"""The image that `make image` built, run with buildah for integration tests.

Fixture `sluice_image` (session; enable with `pytest_plugins = ["tests.support.image"]`)
yields an `Image`: its name, config (user, entry point, ports) and build record
(`build/image/sluice.json`), and `container()` for a fresh working container. A `Container`
runs commands (`run`, or `command` for a long-lived `subprocess.Popen`), with `--isolation
chroot` and the host's network, so loopback peers (the simulator, the control plane) are
reachable as they are from the tests; `mount()` gives its root filesystem to read.

Where buildah or a current image is missing the tests skip and say how to get them, except in
CI (`CI` set), where that is a broken install step and fails them: hack/setup.sh --tests
installs buildah and builds the image.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tests.support.controlplane import REPO

OUT = REPO / "build" / "image"
HOW = "run `make image` (it needs buildah to be tested here: apt-get install -y buildah)"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=check)


@dataclasses.dataclass
class Container:
    """One buildah working container of the image; removed by `remove()`."""

    name: str

    def command(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        env: dict[str, str] | None = None,
        volumes: dict[pathlib.Path, str] | None = None,
    ) -> list[str]:
        """The host command that runs `argv` inside, as the image's user unless told."""
        options = ["--isolation", "chroot"]
        if user is not None:
            options += ["--user", user]
        options += [f"--env={key}={value}" for key, value in (env or {}).items()]
        options += [f"--volume={host}:{inside}:ro" for host, inside in (volumes or {}).items()]
        return ["buildah", "run", *options, self.name, "--", *argv]

    def run(self, argv: Sequence[str], **options: Any) -> subprocess.CompletedProcess[str]:
        """Run to completion; stdout and stderr captured, the exit code not checked."""
        return subprocess.run(
            self.command(argv, **options), capture_output=True, text=True, timeout=60
        )

    def mount(self) -> pathlib.Path:
        return pathlib.Path(buildah("mount", self.name).stdout.strip())

    def remove(self) -> None:
        buildah("rm", self.name, check=False)


@dataclasses.dataclass
class Image:
    """The built image: its name, config and build record."""

    name: str
    record: dict[str, Any]
    inspect: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        """The OCI image config's `config` (User, Entrypoint, Cmd, ExposedPorts, Env, ...)."""
        found: dict[str, Any] = self.inspect["OCIv1"]["config"]
        return found

    @property
    def entrypoint(self) -> list[str]:
        found: list[str] = self.config["Entrypoint"]
        return found

    @property
    def layer_sizes(self) -> list[int]:
        """Bytes of each layer, bottom first, uncompressed (what `buildah images` adds up)."""
        manifest = json.loads(self.inspect["Manifest"])
        return [int(layer["size"]) for layer in manifest["layers"]]

    def container(self) -> Container:
        return Container(buildah("from", "--quiet", "--pull=never", self.name).stdout.strip())


def unavailable(message: str) -> None:
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def find_image() -> Image:
    """The image of the last `make image`, if buildah has it and it matches the sources."""
    if shutil.which("buildah") is None:
        unavailable(f"buildah is not installed: {HOW}")
    record_path = OUT / "sluice.json"
    if not record_path.is_file():
        unavailable(f"no image was built ({record_path} is missing): {HOW}")
    record = json.loads(record_path.read_text())
    current = subprocess.run(
        [str(REPO / "hack/image/build.sh"), "--inputs"],
        env={**os.environ, "IMAGE": record["image"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if record["inputs"] != current:
        unavailable(f"the image is older than the sources (inputs {record['inputs']}): {HOW}")
    found = buildah("inspect", "--type", "image", record["image"], check=False)
    if found.returncode != 0:
        unavailable(f"buildah has no image {record['image']}: {HOW}")
    image = Image(record["image"], record, json.loads(found.stdout))
    if image.config.get("Labels", {}).get("dev.sluice.inputs") != record["inputs"]:
        unavailable(f"buildah's {record['image']} is not the one {record_path} describes: {HOW}")
    return image


@pytest.fixture(scope="session")
def sluice_image() -> Image:
    """The image `make image` built from the current sources (skip, or fail in CI, if none)."""
    return find_image()


@pytest.fixture
def container(sluice_image: Image) -> Iterator[Container]:
    """A fresh working container of the image for one test."""
    made = sluice_image.container()
    yield made
    made.remove()

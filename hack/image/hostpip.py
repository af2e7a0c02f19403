"""What the image build borrows from the host to reach the package index, as build secrets.

    python hack/image/hostpip.py DIR    prints `id=path` lines for `--secret id=...,src=...`
                                        and records them in DIR/secrets.json with hashes

Only what pip on this host would use to reach the index: the CA bundle pip trusts (its `cert`
setting; unset means pip's own bundle, which the build has too) and the settings that choose
or reach the index (`index-url`, `extra-index-url`, `trusted-host`, `proxy`, `timeout`,
`retries`), from pip's files and `PIP_*` variables alike (`pip config list`). Those go into a
fresh `DIR/pip.conf`; the bundle is passed as the host's own file, read-only. The Dockerfile
mounts both for its one `pip install` step and nothing of them is in a layer
(tests/integration/test_image.py checks). Local paths (`find-links`, client certificates) are
left out: they mean nothing inside the build.
"""

from __future__ import annotations

import ast
import configparser
import hashlib
import json
import pathlib
import subprocess
import sys

INDEX_KEYS = ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "retries")
ALIASES = {"default-timeout": "timeout"}


def pip_settings() -> dict[str, str]:
    """pip's effective settings, `key -> value`; `PIP_*` variables override files, as in pip."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    files: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in listing.splitlines():
        name, _, raw = line.partition("=")
        section, _, key = name.rpartition(".")
        if section not in (":env:", "global", "install", "download"):
            continue
        value = str(ast.literal_eval(raw))
        (env if section == ":env:" else files)[ALIASES.get(key, key)] = value
    return {**files, **env}


def secrets(out: pathlib.Path) -> dict[str, pathlib.Path]:
    """The build secrets this host needs, `id -> file`; pip.conf is written into `out`."""
    settings = pip_settings()
    found: dict[str, pathlib.Path] = {}
    cert = settings.get("cert")
    if cert and pathlib.Path(cert).is_file():
        found["ca-bundle"] = pathlib.Path(cert)
    index = {key: settings[key] for key in INDEX_KEYS if key in settings}
    if index:
        config = configparser.ConfigParser(interpolation=None)
        config["global"] = index
        found["pip.conf"] = out / "pip.conf"
        with found["pip.conf"].open("w") as file:
            config.write(file)
    return found


def main(out: pathlib.Path) -> None:
    found = secrets(out)
    record = {
        name: {"source": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        for name, path in found.items()
    }
    (out / "secrets.json").write_text(json.dumps(record))
    for name, path in found.items():
        print(f"{name}={path}")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))

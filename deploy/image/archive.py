#!/usr/bin/env python3
"""Write container images as one docker-archive tarball (what `docker save` writes, what `ctr image import` reads).

    archive.py OUT.tar --image NAME:TAG LAYER.tar[,LAYER.tar...] [--env K=V]... [--cmd JSON] [--user UID] ...

Each --image is one image made of the given uncompressed layer tarballs (in order), with the
settings that follow it. Layers shared by several images are stored once. No registry and no
container engine are involved: a layer is just a tar of files, and the image config lists the
sha256 of each one (its diff_id).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
from pathlib import Path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def build(out: Path, images: list[dict]) -> None:
    layer_ids: dict[Path, str] = {}
    manifest = []
    with tarfile.open(out, "w") as tar:
        for image in images:
            diff_ids, paths = [], []
            for layer in image["layers"]:
                layer = Path(layer).resolve()
                if layer not in layer_ids:
                    layer_ids[layer] = sha256_file(layer)
                    tar.add(layer, arcname=f"{layer_ids[layer]}/layer.tar")
                diff_ids.append(f"sha256:{layer_ids[layer]}")
                paths.append(f"{layer_ids[layer]}/layer.tar")
            config = {
                "architecture": "amd64", "os": "linux",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "config": {k: v for k, v in {"Env": image["env"], "Cmd": image["cmd"], "Entrypoint": image["entrypoint"],
                                             "User": image["user"], "WorkingDir": "/"}.items() if v},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }
            data = json.dumps(config, sort_keys=True).encode()
            name = f"{hashlib.sha256(data).hexdigest()}.json"
            _add_bytes(tar, name, data)
            manifest.append({"Config": name, "RepoTags": [image["name"]], "Layers": paths})
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = list(argv if argv is not None else sys.argv[1:])
    out = Path(argv.pop(0))
    images: list[dict] = []
    while argv:
        flag = argv.pop(0)
        if flag == "--image":
            name, layers = argv.pop(0), argv.pop(0)
            images.append({"name": name, "layers": layers.split(","), "env": [], "cmd": None, "entrypoint": None,
                           "user": None})
        elif flag == "--env":
            images[-1]["env"].append(argv.pop(0))
        elif flag in ("--cmd", "--entrypoint"):
            images[-1][flag[2:]] = json.loads(argv.pop(0))
        elif flag == "--user":
            images[-1]["user"] = argv.pop(0)
        else:
            sys.exit(f"unknown argument {flag!r}: see --help")
    if not images:
        sys.exit(__doc__)
    build(out, images)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Build thaw's container image offline: Debian packages (mmdebstrap, from the apt sources this machine is
# configured with), the portable CRIU in /opt/thaw/criu (scripts/install-criu.sh) and thaw with its Python
# dependencies (wheels from the pip index this machine is configured with). No registry, no container engine.
#
#   deploy/image/build.sh [OUT_DIR]        (from the repository root; default OUT_DIR: /var/cache/thaw-image)
#
# Writes into OUT_DIR:
#   base-<hash>.tar    layer 1: Debian 12 (bookworm) minbase + python3 (cached: rebuilt only when the list changes)
#   thaw-<hash>.tar    layer 2: /opt/thaw/criu, thaw + dependencies under /opt/thaw, /usr/local/bin/thaw
#   thaw-image.tar     docker-archive with thaw.dev/thaw:<version> (agent and operator), for `ctr image import`
#   contents.txt       the image's size and contents (docs/kubernetes.md, "The image", quotes it)
#
# One image for the agent (root, capabilities in the DaemonSet) and the operator (uid 65532). Debian 12 and
# not 13: the image's python3 must be the 3.11 the wheels are built for on this Debian 12 machine; CRIU 4
# comes from the portable tree instead of Debian 12's CRIU 3.17, which fails on kernels >= 6.
# The NVIDIA driver's user-space libraries are NOT in the image: the NVIDIA container runtime injects the
# host driver's own copies, which must match the kernel module anyway.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/var/cache/thaw-image}
PACKAGES=python3,util-linux,ca-certificates   # util-linux: unshare (sandboxes); ca-certificates: S3 over TLS
CRIU=${THAW_CRIU_TREE:-/opt/thaw/criu}
mkdir -p "$OUT"
command -v mmdebstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq mmdebstrap >/dev/null; }
[ -x "$CRIU/bin/criu" ] || { echo "no portable CRIU in $CRIU: run scripts/install-criu.sh" >&2; exit 2; }
[ -x .venv/bin/pip ] || { echo "run scripts/setup.sh first (its pip builds the wheels)" >&2; exit 2; }
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT

# --- layer 1: Debian -------------------------------------------------------------------------------------
base="$OUT/base-$(echo "bookworm $PACKAGES v1" | sha256sum | cut -c1-12).tar"
if [ ! -s "$base" ]; then
  echo "==> Debian bookworm minbase + $PACKAGES (mmdebstrap)"
  # the machine's own apt sources (a deb822 file) name the archive: no host name is written here
  mmdebstrap --quiet --format=tar --variant=minbase --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$base.tmp" /etc/apt/sources.list.d/debian.sources
  mv "$base.tmp" "$base"
fi

# --- layer 2: CRIU and thaw --------------------------------------------------------------------------------
inputs=$( { tar --sort=name --mtime=@0 --owner=0 --group=0 --exclude=__pycache__ -cf - src pyproject.toml README.md deploy/image; \
            cat "$CRIU/bin/criu" "$base"; } | sha256sum | cut -c1-16)
if [ -s "$OUT/thaw-image.tar" ] && [ "$(cat "$OUT/inputs" 2>/dev/null)" = "$inputs" ]; then
  echo "==> thaw image cached in $OUT (same sources)"; cat "$OUT/contents.txt"; exit 0
fi
echo "==> thaw wheel and its dependencies"
.venv/bin/pip wheel --quiet --wheel-dir "$W/wheels" ".[k8s]"
root="$W/root"
.venv/bin/pip install --quiet --no-index --find-links "$W/wheels" --root "$root" --prefix /opt/thaw \
  --no-warn-script-location --no-compile --ignore-installed "thaw[k8s]"
site=$(cd "$root" && ls -d opt/thaw/lib/python3*/site-packages)
python3 -m compileall -q -d "/$site" "$root/$site" >/dev/null || true   # bytecode now: the root is read-only at run time
mkdir -p "$root/opt/thaw" "$root/usr/local/bin"
cp -a "$CRIU" "$root/opt/thaw/criu"
rm -rf "$root/opt/thaw/bin"   # console scripts point at this machine's venv python; the wrapper below replaces them
printf '#!/bin/sh\nexec /usr/bin/python3 -m thaw "$@"\n' > "$root/usr/local/bin/thaw"
# the operator's uid (65532, the Deployment's runAsUser) needs a name: kopf names its peering identity after it
mkdir -p "$root/etc"
tar -xOf "$base" ./etc/passwd > "$root/etc/passwd"; echo 'thaw:x:65532:65532:thaw:/tmp:/usr/sbin/nologin' >> "$root/etc/passwd"
tar -xOf "$base" ./etc/group > "$root/etc/group"; echo 'thaw:x:65532:' >> "$root/etc/group"
chmod 755 "$root/usr/local/bin/thaw"
layer="$W/thaw.tar"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$layer" .
thaw_layer="$OUT/thaw-$(sha256sum "$layer" | cut -c1-12).tar"
mv "$layer" "$thaw_layer"
find "$OUT" -maxdepth 1 -name 'thaw-*.tar' ! -name "$(basename "$thaw_layer")" -delete

# --- the image -------------------------------------------------------------------------------------------------
version=$(.venv/bin/python -c 'import thaw; print(thaw.__version__)')
python3 deploy/image/archive.py "$OUT/thaw-image.tar" \
  --image "thaw.dev/thaw:$version" "$base,$thaw_layer" \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env "PYTHONPATH=/$site" --env THAW_CRIU=/opt/thaw/criu/bin/criu \
  --env PYTHONDONTWRITEBYTECODE=1 --env PYTHONUNBUFFERED=1 \
  --cmd '["thaw", "--help"]'
{
  echo "image thaw.dev/thaw:$version ($(date -u +%F))"
  printf 'layer 1, Debian bookworm minbase + %s: %s MiB\n' "$PACKAGES" $(( $(stat -c %s "$base") >> 20 ))
  printf 'layer 2, CRIU + thaw: %s MiB\n' $(( $(stat -c %s "$thaw_layer") >> 20 ))
  printf '  /opt/thaw/criu: %s MiB\n' $(( $(du -sb "$root/opt/thaw/criu" | cut -f1) >> 20 ))
  printf '  %s: %s MiB\n' "/$site" $(( $(du -sb "$root/$site" | cut -f1) >> 20 ))
  echo "  python packages: $(ls "$root/$site" | grep -E '\.dist-info$' | sed 's/\.dist-info$//' | sort | tr '\n' ' ')"
  printf 'total (uncompressed): %s MiB\n' $(( ($(stat -c %s "$base") + $(stat -c %s "$thaw_layer")) >> 20 ))
} > "$OUT/contents.txt"
cat "$OUT/contents.txt"
echo "$thaw_layer" > "$OUT/thaw-layer"; echo "$base" > "$OUT/base-layer"; echo "$version" > "$OUT/version"
echo "$inputs" > "$OUT/inputs"

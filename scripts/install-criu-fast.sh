#!/usr/bin/env bash
# Build "fast CRIU": CRIU 4.1.1 from Debian 13's own source package plus thaw's page-fill patch
# (scripts/criu-fast-fill.patch: private anonymous memory filled by several threads, huge pages by
# MADV_COLLAPSE; see docs/performance.md, "CRIU page fill"), installed as a portable tree (criu + the
# exact shared libraries it links + the loader) like scripts/install-criu.sh: the tree runs on any
# x86-64 glibc Linux, with no network, whatever its C library.
#
#   usage: scripts/install-criu-fast.sh [PREFIX]     (default PREFIX=/opt/thaw/criu-fast)
#   then:  PREFIX/bin/criu --version                 (prints "Page fill: parallel, ...")
#          THAW_CRIU=PREFIX thaw ...                  (thaw prefers PREFIX=/opt/thaw/criu-fast by itself)
#
# The source tarball and the built tree are cached in THAW_CRIU_CACHE (default
# /var/cache/thaw-criu-fast), keyed by the tarball's and the patch's checksums: a second run, or a
# CI run on the same machine, copies the tree in seconds. Build dependencies (compiler, -dev
# packages) come from the host's own apt sources; the host's C library is left alone.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=$(realpath -m "${1:-/opt/thaw/criu-fast}") # absolute: the build below changes directory
cache=${THAW_CRIU_CACHE:-/var/cache/thaw-criu-fast}
patch_file=$here/criu-fast-fill.patch
# Debian 13's criu source; the checksum is the one in trixie's signed Sources index
version=4.1.1
orig=criu_${version}.orig.tar.xz
orig_sha256=f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
recipe=1 # bump when this script builds differently
key=$(printf '%s %s %s' "$orig_sha256" "$(sha256sum <"$patch_file" | cut -c1-64)" "$recipe" | sha256sum | cut -c1-16)
fill_line='Page fill: parallel'
t0=$(date +%s)

installed_key() { cat "$1/.thaw-build-key" 2>/dev/null || true; }
if [ -x "$prefix/bin/criu" ] && [ "$(installed_key "$prefix")" = "$key" ] \
   && "$prefix/bin/criu" --version 2>/dev/null | grep -q "$fill_line"; then
  echo "fast CRIU already installed in $prefix (build $key)"; exit 0
fi
[ "$(id -u)" = 0 ] || { echo "install-criu-fast.sh: run as root (it installs build dependencies with apt)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$cache"

install_tree() { # copy a built tree into $prefix, replacing what was there
  rm -rf "$prefix.new" && mkdir -p "$(dirname "$prefix")" && cp -a "$1" "$prefix.new"
  rm -rf "$prefix" && mv "$prefix.new" "$prefix"
  "$prefix/bin/criu" --version
  echo "[criu-fast] installed in $prefix in $(( $(date +%s) - t0 )) s"
}
if [ -x "$cache/tree-$key/bin/criu" ]; then
  echo "[criu-fast] using the cached build $key"
  install_tree "$cache/tree-$key"; exit 0
fi

# 1. the source: Debian 13's criu source package, through apt with a private state (host apt untouched)
if ! { [ -f "$cache/$orig" ] && echo "$orig_sha256  $cache/$orig" | sha256sum -c --quiet; }; then
  w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
  mkdir -p "$w/parts" "$w/lists/partial" "$w/cache/archives/partial" "$w/src"
  # the Debian archive the machine's apt is configured with (no host written here)
  mirror=$("$here/debian-archive.sh")
  printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" >"$w/parts/trixie-src.sources"
  A=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$w/parts" -o Dir::State::Lists="$w/lists"
     -o Dir::State::Status=/dev/null -o Dir::Cache="$w/cache" -o Dir::Etc::Preferences=/dev/null
     -o Dir::Etc::PreferencesParts=/dev/null -o APT::Get::AllowUnauthenticated=false
     -o APT::Sandbox::User=root)  # a root-only temp directory: _apt could not enter it (a warning per file)
  echo "[criu-fast] reading Debian 13 source lists (from the Debian archive apt uses here)"
  apt-get "${A[@]}" update -qq
  # apt checks every file it fetches against the signed index; the Debian packaging files (.dsc,
  # .debian.tar.xz) are not needed: only the upstream tarball Debian ships is built here
  (cd "$w/src" && apt-get "${A[@]}" source --download-only -qq "criu=$version-1" >/dev/null 2>&1 || true)
  [ -f "$w/src/$orig" ] || { echo "could not download $orig (Debian 13's criu source) with apt" >&2; exit 1; }
  echo "$orig_sha256  $w/src/$orig" | sha256sum -c --quiet || { echo "$orig: checksum mismatch" >&2; exit 1; }
  cp "$w/src/$orig" "$cache/$orig"
fi

# 2. build dependencies from the host's apt sources (Debian 12 here: its libraries build CRIU 4.1 fine)
deps=(gcc make pkgconf libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler python3-protobuf
      libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev libnftables-dev uuid-dev)
missing=()
for d in "${deps[@]}"; do dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[criu-fast] installing build dependencies: ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 3. unpack, patch, build (outside any git checkout: CRIU's Makefile would print that repo's id)
b=$cache/build-$key
rm -rf "$b" && mkdir -p "$b"
tar -xf "$cache/$orig" -C "$b"
cd "$b/criu-$version"
patch -p1 --quiet <"$patch_file"
echo "[criu-fast] building CRIU $version with the page-fill patch ($(nproc) jobs)"
tb=$(date +%s)
make -j"$(nproc)" criu >"$b/build.log" 2>&1 || { tail -30 "$b/build.log" >&2; echo "build failed: $b/build.log" >&2; exit 1; }
echo "[criu-fast] compiled in $(( $(date +%s) - tb )) s"

# 4. a portable tree: the binary, the libraries it resolves to here, and the loader that goes with them
t=$cache/tree-$key.tmp
rm -rf "$t" && mkdir -p "$t/bin" "$t/lib" "$t/libexec"
cp criu/criu "$t/libexec/criu"
cp -L /lib64/ld-linux-x86-64.so.2 "$t/lib/ld-linux-x86-64.so.2"
"$t/lib/ld-linux-x86-64.so.2" --list "$t/libexec/criu" \
  | awk '/=>/{print $3}' | grep -v ld-linux | while read -r lib; do cp -L "$lib" "$t/lib/"; done
cat >"$t/bin/criu" <<'WRAP'
#!/bin/sh
# Portable fast CRIU: run the tree's criu with its own loader and libraries, leaving the host's libc alone.
here=$(dirname "$(readlink -f "$0")")/..
exec "$here/lib/ld-linux-x86-64.so.2" --library-path "$here/lib" "$here/libexec/criu" "$@"
WRAP
chmod +x "$t/bin/criu"
echo "$key" >"$t/.thaw-build-key"
"$t/bin/criu" --version | grep -q "$fill_line" || { echo "the built criu lacks the page-fill patch" >&2; exit 1; }
rm -rf "$cache/tree-$key" && mv "$t" "$cache/tree-$key"
find "$cache" -maxdepth 1 -name 'tree-*' ! -name "tree-$key" -exec rm -rf {} + # older builds
cd / && rm -rf "$b" # the cached tree is what later runs reuse
install_tree "$cache/tree-$key"
du -sh "$prefix"

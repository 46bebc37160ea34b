#!/usr/bin/env bash
# Install a portable CRIU >= 4 tree (criu + the exact shared libraries it links + glibc's loader)
# built from Debian 13 (trixie) packages, WITHOUT installing any of them into the host:
# installing trixie's criu .deb drags in a newer libc6 and would replace the host's C library.
# Debian 12's own CRIU 3.17 fails on kernels >= 6.x ("vdso: Unexpected rt vDSO area bounds").
#
#   usage: scripts/install-criu.sh [PREFIX]      (default PREFIX=/opt/thaw/criu)
#   then:  PREFIX/bin/criu --version              (a wrapper that runs the tree's loader)
# thaw finds PREFIX/bin/criu by itself (see `thaw doctor`); THAW_CRIU overrides.
set -euo pipefail
prefix=${1:-/opt/thaw/criu}
if [ -x "$prefix/bin/criu" ] && "$prefix/bin/criu" --version 2>/dev/null | grep -qE 'Version: [4-9]'; then
  echo "CRIU already installed in $prefix: $("$prefix/bin/criu" --version | head -1)"; exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# A private apt state that knows Debian 13: the host's own apt configuration is left untouched.
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
mkdir -p "$w/parts" "$w/lists/partial" "$w/cache/archives/partial" "$w/debs" "$w/x"
# Debian 13's packages come from the Debian archive the machine's apt is configured with.
archive=$("$(dirname "$0")/debian-archive.sh")
printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
  "$archive" >"$w/parts/trixie.sources"
# APT::Sandbox::User=root: this private state lives in a root-only temporary directory, which
# apt's unprivileged _apt user cannot enter (apt would warn once per file, then go on as root)
A=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$w/parts" -o Dir::State::Lists="$w/lists"
   -o Dir::State::Status=/dev/null -o Dir::Cache="$w/cache" -o Dir::Etc::Preferences=/dev/null
   -o Dir::Etc::PreferencesParts=/dev/null -o APT::Get::AllowUnauthenticated=false -o APT::Sandbox::User=root)
echo "[criu] reading Debian 13's package lists (from the Debian archive apt uses here)"
apt-get "${A[@]}" update -qq
# criu and the closure of its run-time dependencies, downloaded only
deps=$(apt-cache "${A[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances criu | grep -E '^[a-z0-9]' | sort -u)
echo "[criu] downloading criu and $(echo "$deps" | wc -w) dependencies (not installing them)"
(cd "$w/debs" && for d in $deps; do apt-get "${A[@]}" download -qq "$d" 2>/dev/null || true; done)
[ -n "$(ls "$w/debs"/criu_*.deb 2>/dev/null)" ] || { echo "could not download criu from Debian 13" >&2; exit 1; }
for f in "$w"/debs/*.deb; do dpkg-deb -x "$f" "$w/x"; done
mkdir -p "$prefix/libexec" "$prefix/lib" "$prefix/bin"
cp "$w/x/usr/sbin/criu" "$prefix/libexec/criu"
loader=$(ls "$w"/x/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$w"/x/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 2>/dev/null | head -1 || true)
[ -n "$loader" ] || { echo "no loader in the Debian 13 libc6 package" >&2; exit 1; }
cp -L "$loader" "$prefix/lib/ld-linux-x86-64.so.2"
libdirs="$w/x/lib/x86_64-linux-gnu:$w/x/usr/lib/x86_64-linux-gnu"
# copy exactly the libraries the binary resolves to inside the extracted tree
"$prefix/lib/ld-linux-x86-64.so.2" --library-path "$libdirs" --list "$prefix/libexec/criu" \
  | awk '/=>/{print $3}' | grep -v ld-linux | while read -r lib; do cp -L "$lib" "$prefix/lib/"; done
cat >"$prefix/bin/criu" <<'WRAP'
#!/bin/sh
# Portable CRIU: run Debian 13's criu with its own loader and libraries, leaving the host's libc alone.
here=$(dirname "$(readlink -f "$0")")/..
exec "$here/lib/ld-linux-x86-64.so.2" --library-path "$here/lib" "$here/libexec/criu" "$@"
WRAP
chmod +x "$prefix/bin/criu"
"$prefix/bin/criu" --version
du -sh "$prefix"

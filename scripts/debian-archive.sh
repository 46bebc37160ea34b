#!/usr/bin/env bash
# Print the URI of the Debian archive this machine's apt is configured with (its sources as they
# are: a mirror, a proxy or a snapshot), for tools that need the archive but not the host's suite:
# install-criu.sh (Debian 13 packages) and the CI's fresh root (debootstrap). No host is written
# here on purpose: packages come from where the machine's apt gets them.
#
#   usage: scripts/debian-archive.sh        (as root if apt's lists must be read first)
set -euo pipefail
archive() {  # the Release file's label tells Debian's main archive from security and third-party sources
  apt-get indextargets --format '$(LABEL) $(REPO_URI)' 'Created-By: Packages' 2>/dev/null \
    | awk '$1 == "Debian" { print $2; exit }'
}
uri=$(archive)
if [ -z "$uri" ]; then  # lists not read yet (a fresh root): read them once
  apt-get update -qq >/dev/null && uri=$(archive)
fi
[ -n "$uri" ] || {
  echo "apt has no Debian archive among its sources: add one (deb822 in /etc/apt/sources.list.d/) and run apt-get update" >&2
  exit 1
}
echo "${uri%/}"

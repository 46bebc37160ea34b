"""``thaw keys``: the ed25519 keys that sign artifacts (docs/security.md, "Signed artifacts").

    thaw keys generate /etc/thaw/keys      # thaw-signing.key (0600) + thaw-signing.pub
    thaw keys show /etc/thaw/keys/thaw-signing.pub
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from thaw.cli.output import console, friendly, safe

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})


@app.command()
@friendly
def generate(
    directory: Annotated[Path, typer.Argument(help="where to write the key pair (created if missing)")],
    name: Annotated[str, typer.Option("--name", help="file name of the pair, without extension")] = "thaw-signing",
) -> None:
    """Write a new key pair: NAME.key (private, 0600) and NAME.pub; never overwrites a key.

    Give the private key to the nodes that snapshot (THAW_SIGNING_KEY) and the public key to the
    nodes that restore (THAW_TRUSTED_KEYS): they then refuse artifacts not signed by it.
    """
    from thaw.store.signing import generate as generate_pair

    private, public, key_id = generate_pair(directory, name)
    console.print(f"key {key_id}: private key {safe(private)} (keep it secret), public key {safe(public)}")
    console.print(f"snapshotting nodes: THAW_SIGNING_KEY={safe(private)}")
    console.print(f"restoring nodes:    THAW_TRUSTED_KEYS={safe(public)}")


@app.command()
@friendly
def show(path: Annotated[Path, typer.Argument(help="a .pub or .key file")]) -> None:
    """Print the key id of a public key (or of a private key's public half), as signatures name it."""
    from thaw.errors import ConfigError
    from thaw.store.signing import Signer, Trust

    if path.suffix == ".key":
        console.print(Signer.load(path).key_id)
        return
    trust = Trust.load([path])
    if not trust.keys:
        raise ConfigError("key", f"{path} holds no key")
    console.print(next(iter(trust.keys)))

"""CRIU, spoken through its RPC protocol. The only package that knows CRIU's wire format."""

from thaw.criu.locate import Criu, find_criu
from thaw.criu.rpc import DumpOptions, RestoreOptions, check, dump, log_tail, restore

__all__ = ["Criu", "DumpOptions", "RestoreOptions", "check", "dump", "find_criu", "log_tail", "restore"]

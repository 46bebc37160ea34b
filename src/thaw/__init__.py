"""thaw: snapshot a warmed GPU inference worker once, restore it in seconds on any node.

The flow is freeze → store → thaw (docs/architecture.md):

* a worker warms up and parks at its quiesce point (:mod:`thaw.worker`);
* thaw checkpoints its GPU state with the CUDA driver (:mod:`thaw.cuda`), dumps the
  process tree with CRIU (:mod:`thaw.criu`) and publishes a verifiable artifact
  (:mod:`thaw.store`);
* a restore verifies the artifact, brings the tree back in fresh namespaces
  (:mod:`thaw.sandbox`), restores the GPU state and tells the worker it was thawed.

This package's top level imports nothing heavy, so that ``import thaw.worker``
stays cheap inside inference workers.
"""

__version__ = "0.1.0"

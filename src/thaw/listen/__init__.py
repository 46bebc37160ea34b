"""Running a server thaw does not own: park it at its first listening socket (``thaw run --park-at-listen``).

Every inference server has the same shape: load and warm up, *then* open its listening
socket. That moment is the quiesce point thaw needs (no connections yet, nothing
registered), and Python lets a launcher see it coming without touching the server's
code: the ``socket.bind`` audit event fires before the bind system call.

* :mod:`thaw.listen.spec` — ``ParkAtListen``: which bind (a port, a unix path, the n-th)
  and what counts as too early;
* :mod:`thaw.listen.hook` — inside the server: the audit hook that parks it in
  ``thaw.worker.quiesce()`` (standard library only);
* :mod:`thaw.listen.launch` — on the host: the environment that loads the hook
  (``PYTHONPATH`` with thaw's ``sitecustomize``, which chains to the user's own).

docs/integrations.md says how to run vLLM, SGLang or a FastAPI app this way and what breaks it.
"""

from thaw.listen.spec import ParkAtListen

__all__ = ["ParkAtListen"]

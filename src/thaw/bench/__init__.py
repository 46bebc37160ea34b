"""``thaw bench``: cold starts and restores of one worker, measured the way an operator would.

* :mod:`thaw.bench.schema` — the result (versioned JSON, read back by ``thaw cost``); imports nothing heavy;
* :mod:`thaw.bench.runner` — the run: cold starts, one snapshot, restores one at a time and C at once;
* :mod:`thaw.bench.operations` — the pipeline in this process, or through a node agent;
* :mod:`thaw.bench.answer` — a worker's first answer over HTTP (unix socket or its own loopback);
* :mod:`thaw.bench.phases`, :mod:`thaw.bench.stats`, :mod:`thaw.bench.summary` — phase trees, percentiles, figures;
* :mod:`thaw.bench.machine`, :mod:`thaw.bench.host` — the machine's facts; warming it, dropping caches, bandwidths;
* :mod:`thaw.bench.report`, :mod:`thaw.bench.plots` — Markdown and PNG plots of one or more results.

This module imports none of them: ``thaw.cost`` reads results through ``thaw.bench.schema`` alone,
and the H2D child process (``python -m thaw.bench.h2d``) starts light.
"""

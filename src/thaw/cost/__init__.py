"""``thaw cost``: what a warm pool costs next to autoscaling with cold starts or with restores.

A discrete-event simulation over a traffic trace (simulate.py) of three strategies, each in a
conservative and an optimistic scenario (scenarios.py), from latencies measured by ``thaw bench``
(read through ``thaw.bench.schema`` alone: this package never runs a worker). docs/cost.md
describes the model.
"""

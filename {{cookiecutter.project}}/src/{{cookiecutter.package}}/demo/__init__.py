"""The demo: what exists only to show the stack working, apart from the team's code.

- ``api.py``: the ``demo-api`` service, a slow HTTP endpoint the example I/O task
  ``wait_on_api`` calls (compose runs it; Swarm and Kubernetes only with their demo files);
- ``schedule.py``: example beat entries, sent only where ``DEMO=true`` (compose's local stack,
  the Swarm and Kubernetes demo files).

Delete it in one step with ``make delete-demo``: it removes this folder, ``tests/demo/``, the
demo's Swarm and Kubernetes files and the marked demo lines of ``compose.yaml`` and ``.env``.
"""

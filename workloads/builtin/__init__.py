"""The built-in workloads, one folder each (`mlp/`, `resnet/`, `gpt/`).

A folder's `__init__.py` declares the workload (`INFO`, torch-free; see `base.py`)
and its `model.py` builds it (imports torch). `stepscope.workloads.registry` finds
every folder here; nothing else lists them.
"""

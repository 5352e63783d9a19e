"""The built-in workloads: `mlp`, `resnet` and `gpt`.

Each submodule exports `build(params) -> Workload` and imports torch, so this
package imports none of them: `workloads.registry` declares their parameters and
loads a module only when a trial builds it.
"""

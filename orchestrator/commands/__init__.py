"""The `stepscope` commands, one module per family; `stepscope.orchestrator.cli` adds them to
its group. Each command parses, calls one library function and prints what it returns."""

"""Built-in model families, one module each, found through the ``moe_harness.models`` entry points."""

"""An app without a tasks module: the loader skips it without importing it."""

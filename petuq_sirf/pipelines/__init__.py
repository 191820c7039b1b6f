"""End-to-end runs that compose the layers below (the demo, ...): what the CLI commands call."""

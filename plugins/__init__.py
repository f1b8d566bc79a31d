"""Built-in plugins of expkit, one module per concern."""

"""Sphinx configuration for expkit's user documentation."""

from importlib.metadata import version as _version

project = "expkit"
author = "the expkit developers"
copyright = "2025, the expkit developers"
release = _version("expkit")
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc"]

# The hook reference is generated from expkit/hookspec.py; source order reads
# like the life of a run, alphabetical order would not.
autodoc_member_order = "bysource"

root_doc = "index"
exclude_patterns = ["_build"]
highlight_language = "python"

html_theme = "alabaster"
html_theme_options = {
    "description": "Sacred's experiment tracking in pytest's shape",
    "fixed_sidebar": True,
}

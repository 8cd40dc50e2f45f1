"""Headless core of the UNetSegmentation Slicer extension.

Importing this package is cheap: it loads neither torch nor MONAI. Each submodule imports its heavy
dependencies itself, so the Slicer module can import the package at start-up.
"""

__version__ = "0.1.0"

"""The Slicer side of the extension: the logic (console API), scene I/O, segment import, training from the scene,
dependency installation, and the panel (widget, its state, model list and running jobs).

It imports the headless core (`unetseg`); the core never imports it. Only widget.py imports Qt.
"""

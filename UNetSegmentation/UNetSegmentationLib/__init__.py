"""The Slicer side of the extension: the logic (console API), scene I/O, segment import, the panel.

It imports the headless core (`unetseg`); the core never imports it.
"""

"""Training, evaluation and benchmark scripts over GTVAutoSegLib (the library never imports this).

Run them as modules from the project root, e.g. ``python -m training.train --config training/configs/classifier.json``.
"""

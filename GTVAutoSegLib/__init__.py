"""GTVAutoSegLib: gross tumour volume segmentation on CT, knowing nothing of Slicer, Qt or MRML.

Flow: io (read) -> preprocessing -> cascade (classifier picks slices, segmenter runs on them)
-> preprocessing inverse -> io (write). See README.md.
"""

__version__ = "0.1.0"

"""GTVAutoSeg in the browser: a web app on Kitware's trame-slicer over the Slicer module's logic.

``gtvautoseg serve`` starts it. The app runs the same Qt-free module logic as the 3D Slicer module
(``GTVAutoSeg/GTVAutoSegSlicerLib``: inference in a subprocess, progress, cancel, the review list,
slice re-segmentation) on a trame-slicer MRML scene, renders the views offscreen on the server and
streams them to the page, and edits the result with trame-slicer's Segment Editor effects.

- ``server``: host policy, offscreen rendering, starting the trame server.
- ``app``: the page (state, layout) and its callbacks.
- ``session``: the scene side: the CT, the run, the review list, edits, saving.
- ``inputs``: uploads (size limit, zipped DICOM series) and the server-side data folder, read
  through the CLI's own readers.
"""

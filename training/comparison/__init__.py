"""The paper's comparison (Tables 2-6): peers trained, bundled and evaluated on one split
(``experiments``), nnU-Net v2 through its own pipeline (``nnunet``, ``nnunet_runner``), and the
tables they write (``results/``). Uses the trainer and evaluation of ``training/``; nothing there
imports this package."""

"""Teacher-guided data selection: the ``data_selection:`` setting (``spec``), the sample-level scoring step and its
scores file (``scoring``, ``scores``), which rows are kept (``rows``) and the token-level narrowing of the counted
tokens inside the loss (``tokens``). The tensor rules live in ``losses/selection.py``."""

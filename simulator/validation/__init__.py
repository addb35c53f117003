"""Checking servesim against measurements: benchmark-file readers, replay and comparison
(``servesim compare``), the serving-stack fit (``servesim calibrate --from``), the shipped
published cases (``servesim validate``) and prediction bands (``--bands``).

Imports here stay light: numpy, pandas and the engine are imported inside functions, so
``servesim --help`` does not pay for them.
"""

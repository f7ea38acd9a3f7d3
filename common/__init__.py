"""The bottom of the import graph: small, dependency-free helpers every package may use.

Nothing here imports numpy, torch or any other package of this project (only the
standard library), so ``trainer``, ``engines``, ``streamer`` and ``bench`` can all
import it without breaking the one-way rule (see the README):

- :mod:`common.paths`: where the shipped model lives;
- :mod:`common.sizes`: ``WIDTHxHEIGHT`` sizes (one rule) and fitting a frame into a box;
- :mod:`common.mix`: ``"0:0.5,moss:0.5"`` style mixes (one rule);
- :mod:`common.cli`: command-line options built from a config dataclass, so each default is written once.
"""

"""radclip: RadCLIP, a radiology vision-language foundation model, as a reproducible pipeline."""

from radclip import offline as _offline

_offline.apply()

__version__ = "0.1.0"

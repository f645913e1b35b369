"""Render farm for identity-consistent story illustration with PhotoMaker on SDXL."""

__version__ = "0.1.0"

"""Model presets: which SDXL base, which PhotoMaker checkpoint and face model a render uses."""

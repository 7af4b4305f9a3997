"""The data path: TFRecord reading -> HDF5 frame store -> frame samplers -> LightningDataModule.

Nothing is imported here, so that the data commands (``vdistill convert | synth | inspect``) load neither torch
nor Lightning: import from the modules, e.g. ``from lightning_distill.data.frame_store import FrameStore``.
"""

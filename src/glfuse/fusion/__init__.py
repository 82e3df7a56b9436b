"""MACTFusion and classical multimodal image fusion: fuse, evaluate, compare and train.

``from glfuse.fusion import fuse_images, fuse_folder, load_fusion_model``.
"""

from glfuse.fusion.api import fuse_folder, fuse_images, load_fusion_model

__all__ = ["fuse_folder", "fuse_images", "load_fusion_model"]

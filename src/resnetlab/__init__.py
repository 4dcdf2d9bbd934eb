"""resnetlab: Deep Residual Learning for Image Recognition (He et al., CVPR 2016)."""
__version__ = "0.1.0"

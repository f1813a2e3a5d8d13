"""gasnas: graph-guided architecture search for real-time semantic segmentation.

A working reconstruction of GAS (Lin et al., CVPR 2020). Which parts of the method are
confirmed by the paper and which are reconstructed is written down in docs/method.md.
"""

__version__ = "0.1.0"

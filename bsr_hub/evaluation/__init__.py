"""The evaluation layer: the published protocol (MATLAB bicubic LR, Y-channel PSNR/SSIM), its metrics, the
bicubic baseline, and the robustness suite. Its results go into a checkpoint's records (`models.records`).
"""

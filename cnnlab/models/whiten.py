"""A first layer that whitens image patches, initialised from the training data (airbench's recipe).

Its filters are the eigenvectors of the covariance of all ``k x k`` patches of a sample of normalised
training images, each scaled by ``1 / sqrt(eigenvalue + eps)``, and the same filters negated, so the
ReLU after it keeps both signs. The filters are a buffer, never trained (the bias is): the network
starts from decorrelated inputs, which lets a small net learn faster in few epochs. They are saved in
the state dict, so a checkpoint rebuilds the same layer without the data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class PatchWhitening(nn.Module):
    """``k x k`` valid convolution, ``2 * C * k * k`` output channels, frozen filters from :meth:`fit`."""

    def __init__(self, in_channels: int, kernel_size: int, eps: float = 5e-4, bias_epochs: int | None = None):
        super().__init__()
        self.kernel_size, self.eps = kernel_size, eps
        self.bias_epochs = bias_epochs  # epochs the bias trains (None: all); see frozen_parameters
        n = in_channels * kernel_size * kernel_size
        self.out_channels = 2 * n
        self.register_buffer("weight", torch.zeros(2 * n, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(2 * n))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set the filters from normalised float images ``(N, C, H, W)``."""
        k = self.kernel_size
        c = x.shape[1]
        moment = torch.zeros(c * k * k, c * k * k, dtype=torch.float64, device=x.device)
        count = 0
        for chunk in x.split(500):  # all patches of 5,000 CIFAR images at once would take ~0.5 GB
            patches = chunk.float().unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k).double()
            moment += patches.T @ patches
            count += len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(moment / count)
        filters = eigenvectors.T / (eigenvalues + self.eps).sqrt().unsqueeze(1)
        filters = filters.reshape(-1, c, k, k).to(self.weight)
        self.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


def fit_to_data(model: nn.Module, images: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor]):
    """Fit every data-initialised layer of ``model`` to uint8 ``images``, normalised as in training.

    Layers already fitted (filters not all zero: loaded with ``model.weights``) keep their filters."""
    layers = [m for m in model.modules() if isinstance(m, PatchWhitening) and not m.weight.any()]
    if layers:
        x = normalize(images)
        for layer in layers:
            layer.fit(x)


def frozen_parameters(model: nn.Module, epoch: int) -> list[nn.Parameter]:
    """Parameters that no longer train in ``epoch`` (1-based): whitening biases past their epochs."""
    return [
        m.bias
        for m in model.modules()
        if isinstance(m, PatchWhitening) and m.bias_epochs is not None and epoch > m.bias_epochs
    ]

"""Image parameterisations: pixels; Lucid's Fourier spectrum with 1/f scaling; MACO's phase under a fixed amplitude.

Optimising the scaled spectrum instead of pixels whitens the gradient (natural images have 1/f spectra),
and optimising in a decorrelated colour space makes the three colour directions equally easy to change;
both keep the optimisation from filling the image with high-frequency noise. MACO (Fel et al., NeurIPS 2023)
goes further: the amplitude of every frequency is fixed to that of natural photos
(`spade.featurevis.spectrum.natural_amplitude`) and only the phases are optimised, so the image cannot drift
into the high-frequency patterns that dominate Lucid-style pictures of deep networks.
"""

from __future__ import annotations

import torch

# Square root of ImageNet's RGB colour covariance (from its SVD), as used by Lucid.
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                           [0.27, 0.00, -0.05],
                                           [0.27, -0.09, 0.03]])
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()
# Lucid divides the inverse FFT by this constant; larger values give less saturated images.
FFT_MAGIC = 4.0
PARAMETERIZATIONS = ("fourier", "pixel", "maco")


def frequency_scale(height: int, width: int, decay_power: float = 1.0) -> torch.Tensor:
    """(height, width // 2 + 1) float32 spectrum scale ``1 / max(|f|, 1 / max(h, w)) ** decay_power``."""
    fy = torch.fft.fftfreq(height).unsqueeze(1)
    fx = torch.fft.rfftfreq(width).unsqueeze(0)
    freqs = (fx * fx + fy * fy).sqrt()
    return 1.0 / freqs.clamp_min(1.0 / max(height, width)) ** decay_power


def init_parameters(batch: int, size: int, parameterization: str, sd: float,
                    generator: torch.Generator) -> torch.Tensor:
    """Random starting parameters (CPU float32, drawn from ``generator``).

    fourier: (batch, 3, size, size // 2 + 1, 2) real/imaginary parts; pixel: (batch, 3, size, size);
    maco: (batch, 3, size, size // 2 + 1) phases, uniform in [-pi, pi) whatever ``sd``.
    """
    if parameterization == "maco":
        return (torch.rand((batch, 3, size, size // 2 + 1), generator=generator) * 2 - 1) * torch.pi
    if parameterization == "fourier":
        shape = (batch, 3, size, size // 2 + 1, 2)
    else:
        shape = (batch, 3, size, size)
    return torch.randn(shape, generator=generator) * sd


def to_rgb(params: torch.Tensor, size: int, parameterization: str, decorrelate: bool = True,
           scale: torch.Tensor | None = None) -> torch.Tensor:
    """Parameters -> (batch, 3, size, size) RGB images in (0, 1) (differentiable).

    scale: the `frequency_scale` for the fourier parameterisation, the `natural_amplitude` for maco (computed when
    None). A maco image is standardised (zero mean, unit deviation over each image) before the colours and the
    sigmoid, as in MACO, so that only the phases decide what it shows.
    """
    if parameterization == "maco":
        if scale is None:
            from spade.featurevis.spectrum import natural_amplitude

            scale = natural_amplitude(size).to(params.device)
        x = torch.fft.irfft2(torch.polar(scale.expand_as(params), params), s=(size, size), norm="ortho")
        x = x - x.mean(dim=(1, 2, 3), keepdim=True)
        x = x / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-6)
    elif parameterization == "fourier":
        if scale is None:
            scale = frequency_scale(size, size).to(params.device)
        spectrum = torch.view_as_complex(params.contiguous()) * scale
        x = torch.fft.irfft2(spectrum, s=(size, size), norm="ortho") / FFT_MAGIC
    else:
        x = params
    if decorrelate:
        x = torch.einsum("bchw,dc->bdhw", x, COLOR_CORRELATION.to(x))
    return torch.sigmoid(x)

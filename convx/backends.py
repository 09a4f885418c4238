"""Switches of convx's backends, in the spirit of ``torch.backends``.

    convx.backends.cpu.winograd = False        # every CPU convolution on the exact (im2col + GEMM) path
    with convx.backends.cpu.flags(winograd=False):
        y = model(x)

``winograd`` (default True; the environment variable ``CONVX_CPU_WINOGRAD=0``
turns it off at load time): float32 3x3 convolutions at stride 1, dilation 1
and one group, with 16 or more channels in and out and at least 24 output tiles
of 4x4 (fewer, from 4, where the weights are small enough for them to repay
their transform), run Winograd F(4x4, 3x3) on the CPU, forward and data gradient (so
also the stride-1 3x3 transposed convolution), and the weight gradient with
enough tiles; grouped ones with 16 or 32 channels a group run F(2x2, 3x3) on
AVX-512, forward and data gradient; 1 x 3, 3 x 1, 1 x 7 and 7 x 1 ones
(Inception's) run Winograd along the line, F(m, 3) or F(m, 7), forward and
data gradient, and for 7 taps the weight gradient. Its rounding error is larger
than the direct path's (a few times 1e-6 of the output's scale against a
float64 reference where the direct path has a few times 1e-7; see README,
"Winograd"); float64 never takes it.

``winograd_phases`` (default None: this machine's choice): the 4x4 stride-2
data gradient with padding 1, so also the forward of a 4x4 stride-2 transposed
convolution (DCGAN's generator, upsampling decoders), by its four output
phases as the channels of one 3x3 Winograd convolution, when ``winograd`` is
on. None takes it where it measured faster than the GEMM path (CPUs with under
2 MiB of L2 a core: the Zen 5; the Intel Xeon with 2 MiB ran the GEMM path
faster on every layer); True takes it wherever it applies, False never.

The settings are process-wide, read when each convolution runs.
"""
import contextlib

import torch

__all__ = ["cpu"]


class _CpuBackend:
    @property
    def winograd(self):
        return bool(torch.ops.convx.cpu_winograd(None))

    @winograd.setter
    def winograd(self, enabled):
        torch.ops.convx.cpu_winograd(bool(enabled))

    @property
    def winograd_phases(self):
        mode = int(torch.ops.convx.cpu_winograd_phases(None))
        return None if mode < 0 else bool(mode)

    @winograd_phases.setter
    def winograd_phases(self, mode):
        torch.ops.convx.cpu_winograd_phases(-1 if mode is None else int(bool(mode)))

    @property
    def isa(self):
        """The instruction set the CPU kernels run with ('avx512', 'avx2' or 'base')."""
        return torch.ops.convx.cpu_isa()

    _UNSET = object()

    @contextlib.contextmanager
    def flags(self, winograd=None, winograd_phases=_UNSET):
        """Set the switches for a ``with`` block and restore them after it (``winograd_phases``
        may be set to None, the machine's choice, so an unset one is told apart)."""
        old, old_phases = self.winograd, self.winograd_phases
        try:
            if winograd is not None:
                self.winograd = winograd
            if winograd_phases is not _CpuBackend._UNSET:
                self.winograd_phases = winograd_phases
            yield
        finally:
            self.winograd = old
            self.winograd_phases = old_phases

    def __repr__(self):
        return (f"convx.backends.cpu(winograd={self.winograd}, winograd_phases={self.winograd_phases}, "
                f"isa={self.isa!r})")


cpu = _CpuBackend()

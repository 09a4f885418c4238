"""Batch normalization across processes (torch.distributed), for
:class:`convx.SyncBatchNorm`.

Forward, one collective: every rank computes its per-channel count, mean and
sum of squared deviations (M2) with convx's statistics kernel; one
``all_gather`` of ``[count, mean, M2]`` (float64) brings them to every rank,
where they are merged in the Chan et al. form (no naive sum of squares, so a
large mean does not cancel the variance away). Ranks with an empty local
batch contribute a count of 0. The output is convx's fused batch-norm kernel
with the global statistics (+ residual, + ReLU).

Backward, one collective: the local per-channel sums of the gradient and of
the gradient times (x - mean) come from convx's batch-norm backward kernel;
one ``all_reduce`` (float64) makes them global; the input gradient is then
the eval-mode gradient minus a per-channel affine function of x, applied
with convx's batch-norm kernel in one pass. Weight and bias gradients stay
local, as torch's: DistributedDataParallel averages them with the others.
"""
import torch
import torch.distributed as dist

from .ops import _stat_dtype

_ops = torch.ops.convx


def gather_stats(x: torch.Tensor, process_group, world_size: int):
    """Global (count, mean, biased var, M2) per channel, float64, from every rank's local batch."""
    c = x.shape[1]
    local = torch.zeros(2 * c + 1, dtype=torch.float64, device=x.device)
    n = x.numel() // c if c else 0
    if n:
        mean, var = _ops.batch_norm_stats(x.detach(), None, None, 0.0)
        local[0] = n
        local[1:c + 1] = mean
        local[c + 1:] = var.double() * n
    parts = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(parts, local, group=process_group)
    g = torch.stack(parts)                                  # world x (2C + 1)
    counts, means, m2s = g[:, :1], g[:, 1:c + 1], g[:, c + 1:]
    total = counts.sum()
    if total <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got {int(total.item())} value(s) "
                         f"per channel across {world_size} processes")
    mean = (counts * means).sum(0) / total
    m2 = (m2s + counts * (means - mean).square()).sum(0)
    return total, mean, m2 / total, m2


class SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, running_mean, running_var, eps, momentum, process_group, world_size,
                relu):
        total, mean, var, m2 = gather_stats(x, process_group, world_size)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_((m2 / (total - 1)).to(running_var.dtype), alpha=momentum)
        sd = _stat_dtype(x.dtype)
        mean, var = mean.to(sd), var.to(sd)
        y = _ops.batch_norm(x, mean, var, weight, bias, residual, float(eps), False, bool(relu))
        ctx.save_for_backward(x, mean, var, weight, y if relu else None)
        ctx.eps, ctx.relu, ctx.total = float(eps), bool(relu), float(total)
        ctx.process_group, ctx.has_residual = process_group, residual is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, mean, var, weight, y = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        need_r = ctx.has_residual and ctx.needs_input_grad[3]
        # eval-mode backward: gx = g * w * invstd, gw = sum g * (x - mean) * invstd, gb = sum g (g: gy through relu)
        gx, gw, gb, gr = _ops.batch_norm_backward(gy, x, mean, var, weight, y, ctx.eps, False, ctx.relu,
                                                  [need_x, True, True, need_r])
        if need_x:
            c = x.shape[1]
            invstd = torch.rsqrt(var.double() + ctx.eps)
            sums = torch.cat([gb.double(), gw.double() / invstd])   # sum g, sum g * (x - mean)
            dist.all_reduce(sums, group=ctx.process_group)
            mean_dy, mean_dy_xmu = sums[:c] / ctx.total, sums[c:] / ctx.total
            k = invstd if weight is None else invstd * weight.double()
            b = k * invstd.square() * mean_dy_xmu
            a = k * mean_dy - b * mean.double()
            # gx - (a + b * x), as the batch-norm kernel's per-channel affine map with mean 0 and unit scale:
            # batch_norm(x, 0, 1 - eps, weight=-b, bias=-a, residual=gx) = -b * x - a + gx.
            sd = mean.dtype
            one = torch.full_like(mean, 1.0 - ctx.eps)
            gx = _ops.batch_norm(x, torch.zeros_like(mean), one, (-b).to(sd), (-a).to(sd), gx, ctx.eps, False, False)
        return (gx if need_x else None, gw if need_w and weight is not None else None,
                gb if need_b and weight is not None else None, gr if need_r else None,
                None, None, None, None, None, None, None)



class DistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """``torch.nn.parallel.DistributedDataParallel`` that accepts
    :class:`convx.SyncBatchNorm` in CPU modules.

    torch's DDP refuses every ``torch.nn.SyncBatchNorm`` (convx's is a
    subclass) in a module on the CPU, because torch's own kernel only runs
    on GPUs. convx's runs on the CPU (gloo), so this subclass lets it through
    and still refuses torch's. On GPUs, torch's DDP works as it is."""

    def _passing_sync_batchnorm_handle(self, module):
        from .nn import SyncBatchNorm

        for layer in module.modules():
            if isinstance(layer, torch.nn.SyncBatchNorm) and not isinstance(layer, SyncBatchNorm) \
                    and self.device_type == "cpu":
                self._log_and_throw(ValueError, "SyncBatchNorm layers only work with GPU modules "
                                                "(torch.nn.SyncBatchNorm; convx.SyncBatchNorm also runs on the CPU)")

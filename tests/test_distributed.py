"""Multi-process: convx.SyncBatchNorm against single-process batch norm on
the concatenated batch, DistributedDataParallel against single-process
training, and ``torchrun -m convx train``; two local processes over gloo
(loopback only), free ports chosen at run time, a timeout on every
collective and on every process, nothing left running.

torch.nn.SyncBatchNorm itself refuses CPU tensors ("expected input tensor
to be on GPU"), so on the CPU the reference is what SyncBatchNorm means:
torch.nn.BatchNorm over the batches of all ranks together. On a GPU the
same parity is checked against torch.nn.SyncBatchNorm by the benchmark
script (bench/sync_batch_norm.py)."""
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import convx
from dist_worker import SYNC_CASES, sync_case_data

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")
HERE = os.path.dirname(os.path.abspath(__file__))
WORLD = 2


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_env(rank=None):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(WORLD),
               GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(convx.__file__)), HERE,
                                         env.get("PYTHONPATH", "")])
    return env


def launch(scenario, outdir, timeout=240):
    """Both ranks as subprocesses; any failure or overrun kills both and fails with their output."""
    env = dist_env()
    procs = []
    for rank in range(WORLD):
        procs.append(subprocess.Popen([sys.executable, os.path.join(HERE, "dist_worker.py"), scenario, str(outdir)],
                                      env=dict(env, RANK=str(rank)), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for rank, p in enumerate(procs):
        assert p.returncode == 0, f"rank {rank} failed:\n" + "\n".join(o or "" for o in outs)
    return [torch.load(os.path.join(outdir, f"{scenario}-rank{r}.pt"), weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module", params=["sync_bn", pytest.param("sync_bn_simt", marks=pytest.mark.simt)])
def sync_results(request, tmp_path_factory):
    """Both ranks' results; ``sync_bn_simt``: convx's CUDA kernels on the emulator (convx.simt)."""
    if request.param == "sync_bn_simt" and not convx.simt.available():
        pytest.skip("the emulated CUDA backend is not built")
    return launch(request.param, tmp_path_factory.mktemp(request.param))


def _reference(case):
    """torch.nn.BatchNorm on the whole batch (every rank's slice together), two steps."""
    cfg, x, res, gy = sync_case_data(case)
    c = x.shape[1]
    ref = torch.nn.BatchNorm2d(c, momentum=cfg.get("momentum", 0.1), affine=cfg.get("affine", True),
                               bias=cfg.get("bias", True)).to(x.dtype)
    if ref.weight is not None:
        with torch.no_grad():
            ref.weight.copy_(torch.linspace(0.5, 1.5, c))
            if ref.bias is not None:
                ref.bias.copy_(torch.linspace(-0.3, 0.3, c))
    x = x.clone().requires_grad_()
    res = res.clone().requires_grad_() if res is not None else None
    steps = []
    for _ in range(2):
        x4 = x if x.dim() == 4 else x.unsqueeze(-1)
        y = ref(x4)
        y = y if x.dim() == 4 else y.squeeze(-1)
        if res is not None:
            y = y + res
        if cfg.get("activation") == "relu":
            y = F.relu(y)
        grads = torch.autograd.grad(y, [x] + [p for p in (ref.weight, ref.bias, res) if p is not None], gy)
        steps.append((y.detach(), grads))
    return cfg, steps, ref.state_dict()


@pytest.mark.parametrize("case", list(SYNC_CASES))
def test_sync_batch_norm_matches_batch_norm_on_the_whole_batch(sync_results, case):
    cfg, ref_steps, ref_state = _reference(case)
    tol = dict(rtol=1e-4, atol=1e-5) if cfg.get("dtype") == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    bounds = [sum(cfg["sizes"][:r]) for r in range(WORLD + 1)]
    for step, (y_ref, g_ref) in enumerate(ref_steps):
        got = [r[case]["steps"][step] for r in sync_results]
        # outputs and the input / residual gradients: each rank holds its slice of the whole batch's
        torch.testing.assert_close(torch.cat([g["y"] for g in got]), y_ref, **tol)
        torch.testing.assert_close(torch.cat([g["grads"][0] for g in got]), g_ref[0], **tol)
        if cfg.get("residual"):
            torch.testing.assert_close(torch.cat([g["grads"][-1] for g in got]), g_ref[-1], **tol)
        # weight and bias gradients are local (DDP sums / averages them): the ranks' sum is the whole batch's
        n_param = (cfg.get("affine", True)) + (cfg.get("affine", True) and cfg.get("bias", True))
        for i in range(1, 1 + n_param):
            torch.testing.assert_close(sum(g["grads"][i] for g in got), g_ref[i], **tol)
        if cfg.get("channels_last"):
            assert all(g["channels_last"] for g in got if g["y"].numel())
        for r in range(WORLD):
            assert got[r]["y"].shape[0] == bounds[r + 1] - bounds[r]
    for r in range(WORLD):  # every rank ends with the whole batch's running statistics
        state = sync_results[r][case]["state"]
        assert state.keys() == ref_state.keys()
        for k in ref_state:
            torch.testing.assert_close(state[k], ref_state[k], **tol, msg=k)


def test_sync_batch_norm_eval_needs_no_collective(sync_results):
    # rank 0 ran eval mode alone (rank 1 made no matching call): it returned instead of waiting
    y = sync_results[0]["eval"]
    torch.testing.assert_close(y, torch.ones_like(y) / (1 + 1e-5) ** 0.5)


def test_ddp_step_matches_single_process_training(tmp_path):
    results = launch("ddp", tmp_path)
    torch.manual_seed(0)
    model = convx.models.resnet20(num_classes=10, in_channels=1).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    want = model.state_dict()
    for r in range(WORLD):
        assert results[r].keys() == want.keys()
        for k in want:
            torch.testing.assert_close(results[r][k], want[k], rtol=1e-9, atol=1e-11, msg=f"rank {r}: {k}")


def test_single_process_sync_batch_norm_is_batch_norm():
    """Without an initialised process group (or with one rank) it is convx.BatchNorm2d."""
    torch.manual_seed(0)
    bn, ref = convx.SyncBatchNorm(3, activation="relu").double(), torch.nn.BatchNorm2d(3).double()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(bn(x), F.relu(ref(x)))
    torch.testing.assert_close(bn.running_var, ref.running_var)


def test_convert_sync_bn_keeps_tensors_and_fused_relu():
    m = convx.models.resnet18(num_classes=3)
    params = {k: id(v) for k, v in m.named_parameters()}
    buffers = {k: id(v) for k, v in m.named_buffers()}
    out, report = convx.convert(m, sync_bn=True, return_report=True)
    assert out is m and sum("convx.SyncBatchNorm" in r for r in report) == 20
    assert isinstance(m.layer1[0].bn2, convx.SyncBatchNorm) and m.layer1[0].bn2.activation == "relu"
    assert {k: id(v) for k, v in m.named_parameters()} == params
    assert {k: id(v) for k, v in m.named_buffers()} == buffers
    tv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm1d(2))
    w = tv[1].weight
    conv = convx.SyncBatchNorm.convert_sync_batchnorm(tv)
    assert type(conv[1]) is convx.SyncBatchNorm and conv[1].weight is w and type(conv[2]) is convx.SyncBatchNorm
    assert type(conv[0]) is torch.nn.Conv2d  # only batch norms change


def test_torchrun_trains_data_parallel(tmp_path):
    env = dist_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={env['MASTER_PORT']}", "-m", "convx", "train", "--epochs", "3", "--sync-bn",
           "--quiet"]
    # its own session, so that a timeout kills torchrun's workers too, not only torchrun
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("\nreport") == 1, out.stdout  # rank 0 reports, rank 1 does not
    assert "2 processes (gloo)" in out.stdout and "SyncBatchNorm" in out.stdout, out.stdout
    acc = float(out.stdout.split("resnet20 (convx)")[1].split("%")[0])
    assert acc > 70.0, out.stdout

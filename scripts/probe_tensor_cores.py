"""Record what this GPU's tensor-core instructions put in each lane (run on a GPU).

For every wrapper of csrc/common/tensor_core.cuh (mma f16 / bf16 / tf32, ldmatrix
x1 / x2 / x4 with and without .trans, cp.async ca / cg) it runs the probe kernel on
the inputs the tests use, checks the answer against CuTe's layouts (convx/_probe.py)
and writes every input and answer to tests/data/tensor_core_probe.json, which the
emulator's tests then replay in CI (tests/test_tensor_core.py).

    python scripts/probe_tensor_cores.py [--out tests/data/tensor_core_probe.json]
"""
import argparse
import json
import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import convx  # noqa: E402,F401  (loads the ops)
from convx import _probe  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "data"
                                         / "tensor_core_probe.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("probe_tensor_cores.py needs a CUDA device")
    cases, bad = [], 0
    for ins in _probe.INSTRUCTIONS:
        for seed in range(3):
            inp = _probe.make_input(ins, seed)
            out = torch.ops.convx.tensor_core_probe(ins, inp.cuda()).cpu()
            ok = bool((out.numpy() == _probe.expected(ins, inp)).all())
            bad += not ok
            print(f"{ins:22s} seed {seed}: {'matches' if ok else 'DIFFERS FROM'} the CuTe layouts")
            cases.append({"instruction": ins, "seed": seed, "input": inp.tolist(),
                          "output": out.flatten().tolist(), "matches_cute": ok})
    doc = {"device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
           "torch": torch.__version__, "cuda": torch.version.cuda, "cases": cases}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(doc) + "\n")
    print(f"wrote {args.out}: {len(cases)} cases, {bad} differing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

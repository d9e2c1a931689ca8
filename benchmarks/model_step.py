"""Training-step throughput (forward + backward + AdamW step) of our backbone vs OmniLearned's PET2.

    python benchmarks/model_step.py [--threads 2] [--batch 64] [--particles 128] [--steps 8]

Prints jets/s for the `tiny` and `s` sizes, classification alone and all three objectives, the
fraction of this machine's measured matmul throughput each reaches, and, when the `omnilearned`
package is installed (`pip install omnilearned`), PET2 small timed on the same batch with the ratio.
PET2 small has 8 body blocks plus 2 class-attention blocks in its head, so our `s` is also timed at
depth 10 for a like-for-like ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from raysearch.batch import JetBatch
from raysearch.model import JetModel, ModelConfig, count_parameters
from raysearch.objectives import Mix, mix_loss
from raysearch.schema import JETCLASS_FEATURES


def make_batch(b: int, n: int, seed: int = 0) -> JetBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, len(JETCLASS_FEATURES), generator=g)
    n_real = torch.randint(n // 3, n + 1, (b,), generator=g)  # realistic padding
    mask = torch.arange(n).unsqueeze(0) < n_real.unsqueeze(1)
    return JetBatch(x * mask.unsqueeze(-1), mask, torch.randint(0, 10, (b,), generator=g), torch.zeros(b, 7))


def matmul_gflops(threads: int, size: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * size ** 3 * reps / (time.perf_counter() - t) / 1e9


def time_steps(step, steps: int) -> float:
    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def step_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step()
    return float(fc.get_total_flops())


def ours(size: str, mix: Mix, batch: JetBatch, depth: int | None = None):
    cfg = ModelConfig(size=size, depth=depth, features=JETCLASS_FEATURES, num_classes=10,
                      max_particles=batch.particles.shape[1])
    model = JetModel(cfg, mix.heads)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = mix_loss(model, batch, mix).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, step


def pet2(mode: str, batch: JetBatch):
    from omnilearned.network import PET2

    # PET2's generator draws its noise for exactly 4 features (deta, dphi, log pT, log E).
    x = batch.particles if mode == "classifier" else batch.particles[..., :4].contiguous()
    model = PET2(input_dim=x.shape[-1], mode=mode, num_classes=10, base_dim=128,
                 num_transformers=8, num_transformers_head=2, num_tokens=4, num_heads=8, mlp_ratio=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    y = batch.label

    def step():
        out = model(x, y)
        loss = torch.nn.functional.cross_entropy(out["y_pred"], y)
        if mode == "pretrain":
            loss = loss + ((out["z_pred"] - out["v"]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--particles", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = make_batch(args.batch, args.particles)
    peak = matmul_gflops(args.threads)
    print(f"threads {args.threads}, batch {args.batch}, particles {args.particles}; "
          f"measured matmul throughput {peak:.1f} GFLOP/s")
    print(f"{'model':34s} {'params':>9s} {'jets/s':>9s} {'GFLOP/s':>8s} {'of peak':>8s}")
    results = {}
    configs = [("tiny", Mix(cls=1), None), ("tiny", Mix(1, 1, 1), None), ("s", Mix(cls=1), None),
               ("s", Mix(1, 1, 1), None), ("s", Mix(cls=1), 10), ("s", Mix(cls=1, fm=1), 10)]
    for size, mix, depth in configs:
        model, step = ours(size, mix, batch, depth)
        sec = time_steps(step, args.steps)
        fl = step_flops(step)
        name = f"raysearch {size}{'' if depth is None else f' depth {depth}'} {mix.name}"
        results[(size, mix.name, depth)] = args.batch / sec
        print(f"{name:34s} {count_parameters(model):9d} {args.batch / sec:9.1f} {fl / sec / 1e9:8.1f} "
              f"{fl / sec / 1e9 / peak:8.1%}")
    try:
        import omnilearned  # noqa: F401
    except ImportError:
        print("omnilearned not installed: `pip install omnilearned` to time PET2 small beside ours")
        return
    for mode, ours_key in (("classifier", ("s", "cls", 10)), ("pretrain", ("s", "cls+fm", 10))):
        model, step = pet2(mode, batch)
        sec = time_steps(step, args.steps)
        fl = step_flops(step)
        rate = args.batch / sec
        print(f"{'OmniLearned PET2 small ' + mode:34s} {count_parameters(model):9d} {rate:9.1f} "
              f"{fl / sec / 1e9:8.1f} {fl / sec / 1e9 / peak:8.1%}")
        print(f"  ratio raysearch s depth 10 {ours_key[1]} / PET2 {mode}: {results[ours_key] / rate:.2f}x (goal >= 3x)")


if __name__ == "__main__":
    main()

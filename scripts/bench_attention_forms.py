"""Training steps with an attention's training form against its plain reference, one run.

    OMP_NUM_THREADS=1 python -m scripts.bench_attention_forms --model dmf [--data data/amazon]
        [--preset amazon] [--steps 15] [--rounds 4] [--arch CLASS]

Builds the trainer's own run (`pipeline.train.build_run`: the preset, the data, the
sharded model, the optimizers) and trains segments of --steps steps, alternating the
arch's `forward` and its `forward_reference` --rounds times each, so both see the same
machine load: `DecoupledTargetAttention` (TA, DTA, DMF and the other attention models: Wk
folded into the query, the history pooled before Wv, against K and V materialised) or
`DINInterest` (din, dmae: the activation unit's first layer factorised, against the
concatenated [q; s; q*s; q-s]) or SASRec's `CausalSelfAttentionBlock` (torch's fused
scaled_dot_product_attention, against the scores and a masked softmax); `--arch
SASRecInterest` alternates SASRec's whole interest instead (the fused blocks with the last
one at the last valid position only, against every block in its plain form everywhere).
Prints the median milliseconds per step of each and their ratio. Nothing is written but the run folder's logs (in a temporary directory).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from models.din import DINInterest
from models.dta import DecoupledTargetAttention
from models.sasrec import CausalSelfAttentionBlock, SASRecInterest
from pipeline import train as trainer
from pipeline.config import resolve
from pipeline.data import PreparedData
from pipeline.progress import Progress

# The arch whose two forms a model's run alternates (the attention models: DTA's).
ARCHS = {"din": DINInterest, "dmae": DINInterest, "sasrec": CausalSelfAttentionBlock}
CLASSES = {
    c.__name__: c
    for c in (DecoupledTargetAttention, DINInterest, CausalSelfAttentionBlock, SASRecInterest)
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dmf")
    parser.add_argument("--data", default="data/amazon")
    parser.add_argument("--preset", default="amazon")
    parser.add_argument("--steps", type=int, default=15, help="steps per timed segment")
    parser.add_argument("--rounds", type=int, default=4, help="segments per form")
    parser.add_argument(
        "--arch",
        choices=sorted(CLASSES),
        help="the class whose forms alternate (default: the model's)",
    )
    args = parser.parse_args(argv)
    out = tempfile.mkdtemp(prefix="bench-attention-")
    steps = 5 + 2 * args.rounds * args.steps
    config = resolve(
        ["--preset", args.preset, "--data", args.data, "--model", args.model,
         "--max-steps", str(steps), "--no-evaluate-test", "--eval-every", str(steps + 1),
         "--output-dir", out]
    )  # fmt: skip
    arch = CLASSES[args.arch] if args.arch else ARCHS.get(args.model, DecoupledTargetAttention)
    forms = {"forward": arch.forward, "forward_reference": arch.forward_reference}
    env = trainer.start(config)
    run = trainer.build_run(config, env, PreparedData(config.data), Path(out))
    progress = Progress(run.total_steps, 0, enabled=False)

    def segment(n: int) -> float:
        run.total_steps = run.state.step + n
        start = time.perf_counter()
        trainer.train_segment(run, progress)
        return (time.perf_counter() - start) / n

    times: dict[str, list[float]] = {name: [] for name in forms}
    try:
        segment(5)  # warm-up
        for _ in range(args.rounds):
            for name, form in forms.items():
                arch.forward = form
                times[name].append(segment(args.steps))
    finally:
        arch.forward = forms["forward"]
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    ratio = ms["forward_reference"] / ms["forward"]
    print(
        f"{args.model}: ms per training step, median of {args.rounds} x {args.steps} steps: "
        f"forward {ms['forward']:.0f}, forward_reference {ms['forward_reference']:.0f}; "
        f"forward is {ratio:.2f}x faster"
    )
    return {**ms, "ratio": ratio}


if __name__ == "__main__":
    main()

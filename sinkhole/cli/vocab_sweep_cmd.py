"""`sinkhole vocab-sweep`: which vocabulary tokens become spike tokens when alone at position 0."""

from __future__ import annotations

import argparse
from pathlib import Path

from sinkhole.cli.common import add_model_args, status

HELP = "feed every vocabulary token alone at position 0; report the share that spikes and the exceptions"
EPILOG = """rule: token v alone (no BOS, no chat template) is a spike token when max_l ||h_l|| exceeds
THRESHOLD x the median peak norm of ordinary in-context tokens (positions >= 1 of the first 256
tokens of Python's pydoc topics). dtype: every command's default (float32 on CPU, bfloat16 on CUDA)
unless --dtype is given; only the decoder runs (no LM head, no logits).

examples:
  sinkhole vocab-sweep --json sweep.json
  sinkhole vocab-sweep --model gemma3-270m --sample 20000
  sinkhole vocab-sweep --dtype float32 --batch-size 512
  torchrun --standalone --nproc-per-node 2 -m sinkhole vocab-sweep --json sweep.json   # 2 ranks share the batches
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "vocab-sweep", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(p, sharded=True)
    g = p.add_argument_group("sweep")
    g.add_argument("--threshold", type=float, default=10.0, help="score threshold (x in-context median), default 10")
    g.add_argument("--batch-size", type=int, default=1024, help="tokens per forward pass, default 1024")
    g.add_argument("--sample", type=int, help="sweep a fixed random sample of this many tokens instead of all")
    g.add_argument("--list", type=int, default=20, help="exceptions to print, default 20 (the JSON holds up to 50)")
    o = p.add_argument_group("output")
    o.add_argument("--json", type=Path, help="write the result here ('-': stdout)")
    p.set_defaults(run=run)


def run(args) -> int:
    from sinkhole.distributed import session

    with session(args.device, args.gpus_per_rank) as world:
        return _run(args, world)


def _run(args, world) -> int:
    import json

    from sinkhole.cli.common import raise_failures, result_stream, write_all
    from sinkhole.experiments.interventions import text_ids
    from sinkhole.experiments.vocab_sweep import vocab_sweep
    from sinkhole.io import write_output
    from sinkhole.models.registry import resolve
    from sinkhole.probe.loading import load_model

    name = world.all_ok(lambda: resolve(args.model).name)  # a missing model stops every rank here
    keys = ("dtype", "threshold", "batch_size", "sample")
    world.agree({"model": name, **{k: getattr(args, k) for k in keys}}, "settings")
    lm = world.all_ok(
        lambda: load_model(
            args.model,
            device=world.device,
            dtype=args.dtype,  # the one default rule (sinkhole.models.dtypes)
            trust_remote_code=args.trust_remote_code,
            log=status,
        )
    )
    V = lm.model.get_input_embeddings().num_embeddings
    world.agree({"weights_id": lm.weights_id, "vocab": V}, "model")
    from sinkhole.progress import progress
    from sinkhole.render.vocab_text import render_vocab_sweep

    bar = progress(total=min(V, args.sample or V), desc="tokens", unit="tok")
    try:
        result = vocab_sweep(
            lm,
            text_ids(lm.tokenizer, None, 256),
            args.threshold,
            args.batch_size,
            sample=args.sample,
            progress=bar.update,
            world=world,
        )
    finally:
        bar.close()
    if result is None:  # a rank other than 0: its share went to rank 0
        return 0
    d = {**result.to_dict(), "model": lm.name}
    failures = write_all(
        [(args.json, lambda: write_output(args.json, json.dumps(d, indent=1, ensure_ascii=False), "result"))]
    )
    print(render_vocab_sweep(result, lm.name, args.list), file=result_stream(args.json))
    raise_failures(failures)
    return 0

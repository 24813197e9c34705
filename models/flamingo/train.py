"""Train a Flamingo on easy-VQA's train split as interleaved few-shot sequences.

Two recipes:

- from scratch (the bundled checkpoint): a built-in conv-net vision encoder and a
  tiny GPT-2 with a word-level tokenizer, all trained;
- the paper's: ``--vision-path`` / ``--lm-path`` give local pretrained HF models,
  kept frozen; only the resampler, the cross-attention blocks (and the LM's
  embeddings, for the new tokens) are trained.

    python -m models.flamingo.train --output models/flamingo/checkpoints/easyvqa --steps 1500 --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shlex
import sys
import time
from pathlib import Path

log = logging.getLogger("flamingo.train")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.flamingo.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="checkpoint directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--init-from", default="", help="continue from a checkpoint directory (a second stage)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop early after this much wall time")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--gate-init", type=float, default=0.0,
                   help="initial alpha of the tanh gates (paper: 0, keeping a pretrained LM intact at the start; "
                        "a from-scratch LM has nothing to keep, and open gates let vision learn from step one)")
    p.add_argument("--gate-lr-mult", type=float, default=20.0,
                   help="learning-rate multiplier of the tanh gates' alphas (see below)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-demos", type=int, default=32, help="demos per sequence drawn from 0..N")
    p.add_argument("--curriculum", type=float, default=0.5,
                   help="fraction of the steps over which the demo maximum grows from 2 to --max-demos")
    p.add_argument("--chunks-per-batch", type=int, default=96, help="(image, question, answer) chunks per step")
    p.add_argument("--text-only-prob", type=float, default=0.2, help="chance the first two chunks have no image")
    p.add_argument("--balance", type=float, default=0.5,
                   help="draw questions with weight 1/count(answer)**B (0: as in the data)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=10)
    g = p.add_argument_group("paper recipe: local pretrained parts (frozen unless --train-*)")
    g.add_argument("--vision-path", default="", help="local HF vision model directory")
    g.add_argument("--lm-path", default="", help="local HF causal LM directory (GPT-2, OPT, Llama...)")
    g.add_argument("--train-vision", action="store_true", help="also train a pretrained vision encoder")
    g.add_argument("--train-lm", action="store_true", help="also train a pretrained LM")
    g.add_argument("--prepend-bos", action="store_true", help="start prompts with the tokenizer's BOS (Llama)")
    s = p.add_argument_group("sizes (built-in parts; resampler and cross-attention always)")
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--vision-channels", default="16,32,64,128")
    s.add_argument("--lm-family", choices=["llama", "gpt2"], default="llama",
                   help="built-in LM: llama (rotary positions: relative, so finding the current chunk's "
                        "question among 33 is easy from scratch) or gpt2 (learned absolute positions)")
    s.add_argument("--lm-dim", type=int, default=128)
    s.add_argument("--lm-layers", type=int, default=2)
    s.add_argument("--lm-heads", type=int, default=4)
    s.add_argument("--n-positions", type=int, default=1024)
    s.add_argument("--latents", type=int, default=8)
    s.add_argument("--resampler-depth", type=int, default=1)
    s.add_argument("--resampler-heads", type=int, default=4)
    s.add_argument("--max-frames", type=int, default=8)
    s.add_argument("--xattn-every", type=int, default=1)
    s.add_argument("--xattn-heads", type=int, default=4)
    s.add_argument("--xattn-dim-head", type=int, default=32)
    s.add_argument("--ff-mult", type=int, default=2)
    return p.parse_args(argv)


def build_model(args, data):
    from .config import FlamingoConfig, LMConfig, ResamplerConfig, VisionConfig
    from .data import DEMO
    from .model import FlamingoModel, load_tokenizer
    from .tokenizer import build_word_tokenizer

    if args.lm_path:
        tok = load_tokenizer(args.lm_path)
        hf_config: dict = {}
    else:
        texts = [DEMO.format(question=q) for q in sorted(set(data.questions))] + sorted(set(data.answers))
        tok = build_word_tokenizer(texts)
        ids = dict(vocab_size=len(tok), bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id)
        if args.lm_family == "llama":
            hf_config = dict(model_type="llama", hidden_size=args.lm_dim, num_hidden_layers=args.lm_layers,
                             num_attention_heads=args.lm_heads, num_key_value_heads=args.lm_heads,
                             intermediate_size=4 * args.lm_dim, max_position_embeddings=args.n_positions,
                             tie_word_embeddings=True, **ids)
        else:
            hf_config = dict(model_type="gpt2", n_embd=args.lm_dim, n_layer=args.lm_layers, n_head=args.lm_heads,
                             n_positions=args.n_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    cfg = FlamingoConfig(
        vision=VisionConfig(path=args.vision_path, image_size=args.image_size,
                            channels=tuple(int(c) for c in args.vision_channels.split(",")),
                            frozen=bool(args.vision_path) and not args.train_vision),
        resampler=ResamplerConfig(num_latents=args.latents, depth=args.resampler_depth, heads=args.resampler_heads,
                                  dim_head=32, ff_mult=args.ff_mult, max_frames=args.max_frames),
        lm=LMConfig(path=args.lm_path, hf_config=hf_config, frozen=bool(args.lm_path) and not args.train_lm,
                    cross_attn_every=args.xattn_every, xattn_heads=args.xattn_heads,
                    xattn_dim_head=args.xattn_dim_head, xattn_ff_mult=args.ff_mult, prepend_bos=args.prepend_bos),
    )
    return FlamingoModel(cfg, tok)


def plot_loss(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="answer loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (answer tokens)")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    ax2.plot([h["step"] for h in history], [h["acc"] for h in history], color="tab:orange", alpha=0.6,
             label="answer token accuracy")
    ax2.set_ylabel("train token accuracy")
    ax.set_title("Flamingo (tiny) on easy-VQA, interleaved sequences")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import torch
    import torch.nn.functional as F

    from .data import IGNORE, InterleavedSampler, load_easyvqa_train

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    t0 = time.time()
    data = load_easyvqa_train(args.image_size)
    log.info("loaded %d questions over %d images in %.1fs", len(data.questions), len(data.images), time.time() - t0)
    if args.init_from:
        from .model import FlamingoModel

        model = FlamingoModel.load(args.init_from)
        log.info("continuing from %s", args.init_from)
    else:
        model = build_model(args, data)
        with torch.no_grad():
            for block in model.xattn:
                block.attn_gate.fill_(args.gate_init)
                block.ff_gate.fill_(args.gate_init)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_train, n_all = sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())
    log.info("parameters: %d trainable of %d", n_train, n_all)
    # Adam moves a scalar by about lr per step, so alphas starting at 0 would keep the
    # visual path nearly shut for hundreds of steps of a short run: give them a larger rate.
    gates = [p for n, p in model.named_parameters() if n.endswith("_gate")]
    gate_ids = {id(p) for p in gates}
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2 and id(p) not in gate_ids]
    groups = [{"params": decay, "weight_decay": args.weight_decay, "mult": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "mult": 1.0},
              {"params": gates, "weight_decay": 0.0, "mult": args.gate_lr_mult}]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 5%
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        frac = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    def demo_cap(step: int) -> int:
        # Short sequences first: a from-scratch LM finds the current chunk's question far more
        # easily among a few chunks than among 33, and the visual path starts learning sooner.
        if args.curriculum <= 0:
            return args.max_demos
        frac = min(1.0, step / (args.curriculum * args.steps))
        return min(args.max_demos, round(2 + (args.max_demos - 2) * frac))

    sampler = InterleavedSampler(data, model, args.max_demos, args.chunks_per_batch, args.text_only_prob, args.seed,
                                 args.balance)
    history: list[dict] = []
    run_loss = run_acc = 0.0
    run_n = 0
    t_train = time.time()
    step = 0
    for step in range(args.steps):
        ids, labels, images = sampler.batch(demo_cap(step))
        flat = [i for row in images for i in row]
        pixels = model.preprocess.normalize(data.images[flat])
        feats = model.encode_media(pixels)
        per_row, k = [], 0
        for row in images:
            per_row.append(feats[k : k + len(row)])
            k += len(row)
        input_ids, mask, media = model.collate(ids, per_row)
        target = torch.full_like(input_ids, IGNORE)
        for r, lab in enumerate(labels):
            target[r, target.shape[1] - len(lab):] = torch.tensor(lab)
        logits = model(input_ids, media, mask).logits[:, :-1]
        tgt = target[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=IGNORE)
        for g in opt.param_groups:
            g["lr"] = lr_at(step) * g["mult"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            sel = tgt != IGNORE
            run_acc += float((logits.argmax(-1)[sel] == tgt[sel]).float().mean())
        run_loss += float(loss.detach())
        run_n += 1
        if (step + 1) % args.log_every == 0 or step == args.steps - 1:
            entry = {"step": step + 1, "loss": run_loss / run_n, "acc": run_acc / run_n,
                     "lr": lr_at(step), "elapsed_s": round(time.time() - t_train, 1),
                     "gates": [round(float(b.attn_gate.tanh()), 3) for b in model.xattn]}
            history.append(entry)
            log.info("step %d loss %.4f acc %.3f lr %.2e %.0fs gates %s", entry["step"], entry["loss"], entry["acc"],
                     entry["lr"], entry["elapsed_s"], entry["gates"])
            run_loss = run_acc = 0.0
            run_n = 0
        if args.max_minutes is not None and time.time() - t_train > 60 * args.max_minutes:
            log.info("stopping at step %d: --max-minutes %.1f reached", step + 1, args.max_minutes)
            break
    wall = time.time() - t_train

    out = Path(args.output)
    model.eval()
    model.save(out)
    (out / "training_log.json").write_text(json.dumps(history, indent=1) + "\n")
    plot_loss(history, out / "loss_curve.png")
    command = "python -m models.flamingo.train " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    previous = ""
    if args.init_from and (Path(args.init_from) / "TRAINING.md").is_file():
        previous = "\n## Previous stage (--init-from)\n\n" + (Path(args.init_from) / "TRAINING.md").read_text().split(
            "\n", 1)[1].replace("![loss curve](loss_curve.png)", "")
    (out / "TRAINING.md").write_text(
        "# How this checkpoint was trained\n\n"
        f"    {command}\n\n"
        f"- seed: {args.seed}\n"
        f"- steps: {step + 1} of {args.steps}, {args.chunks_per_batch} (image, question, answer) chunks per step, "
        f"demos per sequence drawn from 0..cap, the cap growing from 2 to {args.max_demos} over the first "
        f"{args.curriculum:.0%} of the steps\n"
        f"- training wall time: {wall / 60:.1f} min on {args.threads} CPU threads "
        f"(torch {torch.__version__}); data loading {t_train - t0:.0f}s before that\n"
        f"- parameters: {n_train} trained of {n_all}\n"
        f"- final answer loss {history[-1]['loss']:.4f}, train answer-token accuracy {history[-1]['acc']:.3f}\n"
        "- data: easy-VQA train split (38,575 questions, 4,000 images), OpenFlamingo prompt "
        "`<image>Question:{q} Short answer:{a}<|endofchunk|>`\n\n"
        "![loss curve](loss_curve.png)\n" + previous
    )
    log.info("saved %s in %.1f min", out, wall / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())

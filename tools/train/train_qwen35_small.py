#!/usr/bin/env python3
"""Trains a small Qwen3.5-architecture language model (transformers' Qwen3_5ForCausalLM) from scratch.

    train_qwen35_small.py --data BUNDLE --out CKPT [--minutes 6] [--preset full]   # the real run (GPU)
    train_qwen35_small.py --smoke --out DIR                                         # CPU, < 1 min

BUNDLE is what prepare_bundle.py writes: train.npy / test.npy (uint16 token ids, documents separated by
<|endoftext|>), data.json, tokenizer.json, tokenizer_config.json (and the corpus manifest). Only torch,
numpy, safetensors and transformers are needed here; the `tokenizers` library is used by --smoke alone.

The model has every Qwen3.5 ingredient, scaled down: layers in the pattern 3 Gated DeltaNet (linear
attention) : 1 gated full attention; GQA with an output gate in attention, q/k RMSNorm, partial rotary
embedding (25% of the head dimension, theta 1e7); Gated DeltaNet with a depthwise causal conv of kernel
4, L2-normalised q/k, per-head decay (A_log, dt_bias) and a gated RMSNorm, more value heads than key
heads; zero-centred RMSNorm; SwiGLU MLP; tied embeddings. The vocabulary is the tokenizer's rounded
up to a multiple of 64.

Training: documents packed into rows of --seq-len + 1 tokens (a random offset per epoch, rows shuffled),
AdamW (fused on CUDA; no weight decay on norms, A_log, dt_bias), linear warmup then cosine decay to
--min-lr-ratio of the peak, gradient clipping, bf16 autocast on CUDA; the whole batch of data lives on the
device. transformers runs Gated DeltaNet with its reference PyTorch code when flash-linear-attention and
causal-conv1d are not installed (they are not, on the GPU machine): measured on an H200, 128 x 512 tokens
take ~250 ms a step (~260k tokens/s), bound by that code's elementwise work and launches, not by the
model's width. --compile on tries torch.compile (off by default: it did not finish compiling within two
minutes there; if it fails, the run carries on eager). With --minutes the schedule follows the clock: it
decays to its minimum when the time is up, keeping back what the final evaluation and the save need, so
the run always saves. Held-out loss, perplexity and bits per byte are measured at the start, at 25/50/75%
and at the end.

Output directory (a Hugging Face checkpoint that transformers and deltaserve load): config.json,
model.safetensors (float32 if that stays under 50 MB, else bfloat16; --save-dtype), tokenizer.json,
tokenizer_config.json, generation_config.json, train_log.json (loss curve, steps, tokens, times, held-out
results, device, and a probe: the first test tokens, transformers' 20 greedy tokens after them and the
top logits, computed from the weights as saved, for checking other runtimes) and, when the bundle has
one, corpus_manifest.json (the sources and their licences).
"""
import argparse
import glob
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time

T_PROCESS_START = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SAVE_LIMIT_BYTES = 50 * 1000 * 1000

# Model shapes. Layer types follow full_attention_interval 4: linear, linear, linear, full, ...
PRESETS = {
    # 23.9 M parameters with an 8,192-token vocabulary (3.7 M of them the tied embedding): 47.8 MB in
    # bfloat16. Like Qwen3.5's own shapes, attention (8 x 64) and the delta rule's values (8 x 64) are
    # wider than the residual stream (448). On an H200 the step time hardly depends on the width (the
    # reference Gated DeltaNet code's elementwise work dominates), so the width is set by the 50 MB file.
    "full": dict(hidden_size=448, intermediate_size=1216, num_hidden_layers=8, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=64, linear_num_key_heads=4, linear_num_value_heads=8,
                 linear_key_head_dim=64, linear_value_head_dim=64),
    # A few hundred thousand parameters: the CPU smoke test.
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
                  linear_key_head_dim=16, linear_value_head_dim=16),
}
COMMON = dict(hidden_act="silu", linear_conv_kernel_dim=4, rms_norm_eps=1e-6, tie_word_embeddings=True,
              attention_bias=False, attention_dropout=0.0, initializer_range=0.02, use_cache=True)
ROPE_THETA = 10_000_000.0
PARTIAL_ROTARY = 0.25
SAMPLING_DEFAULTS = dict(do_sample=True, temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.1,
                         max_new_tokens=256)
PROBE_PROMPT_TOKENS = 16
PROBE_NEW_TOKENS = 20


def log(msg):
    print(f"[{time.time() - T_PROCESS_START:7.1f}s] {msg}", flush=True)


def ensure_tokenizers_importable():
    """transformers 5.17 imports the `tokenizers` library while importing any model (configuration_utils ->
    modeling_gguf_pytorch_utils -> integrations.ggml), although training needs nothing from it. Where the
    library is missing, a stub that fails only when something is used from it lets transformers import.
    It goes in after `import transformers`, whose dependency check skips an absent tokenizers but would
    take the stub for an installed one without version metadata. Returns True when the stub was installed."""
    try:
        import tokenizers  # noqa: F401
        return False
    except ImportError:
        pass
    import transformers  # noqa: F401
    import importlib.machinery
    import types

    class Missing:
        def __init__(self, *args, **kwargs):
            raise ImportError("the tokenizers library is not installed")

    def module(name):
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)

        def getattr_(attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return type(attr, (Missing,), {})
        mod.__getattr__ = getattr_
        return mod

    root = module("tokenizers")
    root.__path__ = []
    sys.modules["tokenizers"] = root
    for sub in ("decoders", "normalizers", "pre_tokenizers", "processors", "models", "trainers"):
        child = module(f"tokenizers.{sub}")
        setattr(root, sub, child)
        sys.modules[child.__name__] = child
    # transformers cached "not available" during its import; with neither tokenizers nor sentencepiece
    # available, transformers.models.auto.tokenization_auto fails to define AutoTokenizer, so let the
    # (unused) tokenizers backend class be defined over the stub.
    from transformers.utils import import_utils
    if hasattr(import_utils.is_tokenizers_available, "cache_clear"):
        import_utils.is_tokenizers_available.cache_clear()
    return True


def round_up(n, m):
    return (n + m - 1) // m * m


def make_config(preset, vocab_size, ids, max_position_embeddings, overrides):
    from transformers import Qwen3_5TextConfig
    spec = dict(PRESETS[preset], **COMMON)
    spec.update(overrides)
    layers = spec["num_hidden_layers"]
    spec["layer_types"] = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)]
    half_rotary = int(spec["head_dim"] * PARTIAL_ROTARY) // 2
    # Qwen3.5's M-RoPE sections (temporal, height, width) split the rotary frequencies; for text the
    # three position streams are equal, so this only has to be a valid split, interleaved as in Qwen3.5.
    section = [half_rotary - 2 * (half_rotary // 3), half_rotary // 3, half_rotary // 3]
    spec["rope_parameters"] = dict(rope_type="default", rope_theta=ROPE_THETA,
                                   partial_rotary_factor=PARTIAL_ROTARY, mrope_section=section,
                                   mrope_interleaved=True)
    spec.update(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                bos_token_id=None, eos_token_id=ids["endoftext_id"], pad_token_id=ids["endoftext_id"])
    return Qwen3_5TextConfig(**spec)


# ---------------------------------------------------------------------------------------------------------
# Data


class PackedTokens:
    """A flat token array on the device, served as shuffled rows of seq_len + 1 tokens."""

    def __init__(self, ids, seq_len, device, seed):
        self.seq_len = seq_len
        self.data = torch.from_numpy(ids.astype(np.int64)).to(device)
        self.n = self.data.numel()
        if self.n < seq_len + 2:
            raise ValueError(f"{self.n} tokens are too few for rows of {seq_len + 1}")
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch = -1
        self.order = None
        self.pos = 0
        self.offsets = torch.arange(seq_len + 1, device=device)
        self._new_epoch()

    def _new_epoch(self):
        self.epoch += 1
        shift = 0 if self.epoch == 0 else int(torch.randint(0, self.seq_len, (1,), generator=self.gen))
        rows = (self.n - 1 - shift) // self.seq_len
        starts = torch.arange(rows) * self.seq_len + shift
        self.order = starts[torch.randperm(rows, generator=self.gen)].to(self.data.device)
        self.pos = 0

    def next(self, batch):
        if self.pos + batch > self.order.numel():
            self._new_epoch()
        starts = self.order[self.pos:self.pos + batch]
        self.pos += batch
        rows = self.data[starts[:, None] + self.offsets[None, :]]
        return rows[:, :-1], rows[:, 1:]

    def eval_rows(self):
        """Every non-overlapping row, in order (for held-out evaluation)."""
        rows = (self.n - 1) // self.seq_len
        starts = torch.arange(rows, device=self.data.device) * self.seq_len
        return self.data[starts[:, None] + self.offsets[None, :]]


def load_bundle(data_dir):
    with open(os.path.join(data_dir, "data.json")) as f:
        info = json.load(f)
    train = np.load(os.path.join(data_dir, info["train"]["file"]), mmap_mode="r")
    test = np.load(os.path.join(data_dir, info["test"]["file"]), mmap_mode="r")
    return info, np.asarray(train), np.asarray(test)


def smoke_bundle(out_dir, texts_glob, vocab_size):
    """A tiny bundle from local text files (default: Debian's common licences): tokenizer + ids."""
    sys.path.insert(0, HERE)
    import train_tokenizer
    from pretokenize import encode_documents
    from tokenizers import Tokenizer

    paths = sorted(p for p in glob.glob(texts_glob) if os.path.isfile(p) and not os.path.islink(p))
    docs = []
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            text = f.read()
        # Paragraph groups of ~2 KB: enough documents for a split, each ending with <|endoftext|>.
        chunk = []
        for para in text.split("\n\n"):
            chunk.append(para)
            if sum(len(c) for c in chunk) > 2000:
                docs.append("\n\n".join(chunk).strip() + "\n")
                chunk = []
        if chunk:
            docs.append("\n\n".join(chunk).strip() + "\n")
    if len(docs) < 10:
        raise SystemExit(f"--smoke: too little text in {texts_glob}")
    ref_tok, ref_cfg = train_tokenizer.load_reference(train_tokenizer.DEFAULT_REFERENCE)
    spec, cfg = train_tokenizer.train(docs, vocab_size, ref_tok, ref_cfg)
    train_tokenizer.write(out_dir, spec, cfg)
    tok = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    ids = train_tokenizer.token_ids(spec)
    test_docs = docs[-max(1, len(docs) // 10):]
    train_docs = docs[:-len(test_docs)]
    train = encode_documents(tok, train_docs, ids["endoftext"])
    test = encode_documents(tok, test_docs, ids["endoftext"])
    info = {"vocab_size": ids["vocab_size"], "endoftext_id": ids["endoftext"], "im_start_id": ids["im_start"],
            "im_end_id": ids["im_end"], "source": texts_glob,
            "train": {"tokens": int(train.size), "documents": len(train_docs),
                      "text_bytes": sum(len(d.encode()) for d in train_docs)},
            "test": {"tokens": int(test.size), "documents": len(test_docs),
                     "text_bytes": sum(len(d.encode()) for d in test_docs)}}
    return info, train, test


# ---------------------------------------------------------------------------------------------------------
# Training


def lr_at(step, progress, args):
    warm = min(1.0, (step + 1) / max(1, args.warmup_steps))
    p = min(1.0, max(0.0, progress))
    cosine = args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    return args.lr * warm * cosine


def param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(("A_log", "dt_bias")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(model, rows, batch, device, amp_dtype, bytes_per_token):
    model.eval()
    total, count = 0.0, 0
    for i in range(0, rows.shape[0], batch):
        chunk = rows[i:i + batch]
        x, y = chunk[:, :-1], chunk[:, 1:]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
        total += float(loss)
        count += y.numel()
    model.train()
    mean = total / max(1, count)
    return {"loss": mean, "ppl": math.exp(min(mean, 50)),
            "bits_per_byte": mean / math.log(2) / bytes_per_token if bytes_per_token else None,
            "tokens": count}


def save_checkpoint(model, config, out_dir, data_dir, info, save_dtype):
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    os.makedirs(out_dir, exist_ok=True)
    state = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        state[name] = t.detach().to("cpu", save_dtype).contiguous()
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["Qwen3_5ForCausalLM"]
    config.dtype = save_dtype
    config.save_pretrained(out_dir)
    gen = GenerationConfig(eos_token_id=[info["im_end_id"], info["endoftext_id"]],
                           pad_token_id=info["endoftext_id"], **SAMPLING_DEFAULTS)
    gen.save_pretrained(out_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(data_dir, name), os.path.join(out_dir, name))
    manifest = os.path.join(data_dir, "manifest.json")
    if os.path.exists(manifest):
        shutil.copyfile(manifest, os.path.join(out_dir, "corpus_manifest.json"))


@torch.no_grad()
def probe(model, prompt_ids, save_dtype):
    """transformers' greedy continuation and last logits, float32 on CPU, from the weights as saved."""
    import copy
    m = copy.deepcopy(model).to("cpu")
    for p in m.parameters():
        p.data = p.data.to(save_dtype).to(torch.float32)
    m = m.to(torch.float32).eval()
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    logits = m(input_ids=ids).logits[0, -1]
    out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                     max_new_tokens=PROBE_NEW_TOKENS, min_new_tokens=PROBE_NEW_TOKENS, eos_token_id=None,
                     pad_token_id=0, repetition_penalty=1.0)
    top = torch.topk(logits, 20)
    full = m(input_ids=out).logits[0, len(prompt_ids) - 1:-1]
    top2 = full.topk(2, dim=-1).values
    return m, {"prompt_ids": list(prompt_ids), "greedy_ids": out[0, len(prompt_ids):].tolist(),
               "greedy_min_top2_gap": float((top2[:, 0] - top2[:, 1]).min()),
               "last_logits_top20": [[int(i), float(v)] for v, i in zip(top.values, top.indices)]}


def reload_check(out_dir, reference_model, prompt_ids):
    from transformers import AutoModelForCausalLM
    loaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    with torch.no_grad():
        a = reference_model(input_ids=ids).logits
        b = loaded(input_ids=ids).logits
    return type(loaded).__name__, float((a - b).abs().max())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="bundle directory (prepare_bundle.py); --smoke builds its own")
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="model shape (default: full; "
                    "smoke with --smoke)")
    ap.add_argument("--model-overrides", default="{}", help="JSON object of Qwen3_5TextConfig fields")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget for the whole run")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per row (default 512; smoke 128)")
    ap.add_argument("--batch-size", type=int, default=None, help="rows per step (default 128; smoke 8)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3; smoke 5e-3)")
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup-steps", type=int, default=None, help="default 100; smoke 5")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--compile", choices=["on", "off"], default="off",
                    help="torch.compile the training step (default off: with transformers 5.17's reference Gated "
                         "DeltaNet code, compiling did not finish within 2 minutes on an H200, even for the smoke model)")
    ap.add_argument("--save-dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    ap.add_argument("--max-position-embeddings", type=int, default=32768)
    ap.add_argument("--log-seconds", type=float, default=10.0, help="progress line interval")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--eval-rows", type=int, default=0, help="evaluate on the first N held-out rows (0: all)")
    ap.add_argument("--no-save", action="store_true", help="train and evaluate only (timing runs)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, few dozen CPU steps on local text; "
                    "fails unless the loss goes down")
    ap.add_argument("--smoke-text", default="/usr/share/common-licenses/*", help="glob of text files for --smoke")
    args = ap.parse_args(argv)

    smoke = args.smoke
    preset = args.preset or ("smoke" if smoke else "full")
    defaults = dict(seq_len=128, batch_size=8, lr=5e-3, warmup_steps=5) if smoke else \
        dict(seq_len=512, batch_size=128, lr=2e-3, warmup_steps=100)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if smoke and args.max_steps is None and args.minutes is None:
        args.max_steps = 40
    if args.max_steps is None and args.minutes is None:
        ap.error("give --minutes or --max-steps")
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    amp_dtype = torch.bfloat16 if cuda else None
    use_compile = args.compile == "on"
    torch.manual_seed(args.seed)

    # Data.
    os.makedirs(args.out, exist_ok=True)
    if args.data:
        data_dir = args.data
        info, train_ids, test_ids = load_bundle(data_dir)
    elif smoke:
        data_dir = tempfile.mkdtemp(prefix="smoke-bundle-")
        info, train_ids, test_ids = smoke_bundle(data_dir, args.smoke_text, vocab_size=512)
    else:
        ap.error("--data is required (or --smoke)")
    tokenizer_size = info["vocab_size"]
    vocab = round_up(tokenizer_size, 64)
    bytes_per_token = info["test"]["text_bytes"] / max(1, info["test"]["tokens"])
    log(f"data: {train_ids.size:,} train tokens, {test_ids.size:,} test tokens, tokenizer {tokenizer_size} "
        f"-> vocab {vocab}, device {device}")
    train_data = PackedTokens(train_ids, args.seq_len, device, args.seed)
    test_rows = PackedTokens(test_ids, args.seq_len, device, args.seed).eval_rows()
    if args.eval_rows:
        test_rows = test_rows[:args.eval_rows]

    # Model.
    if ensure_tokenizers_importable():
        log("the tokenizers library is missing: a stub stands in for it (transformers imports it; training "
            "does not use it)")
    from transformers import Qwen3_5ForCausalLM
    import transformers
    overrides = json.loads(args.model_overrides)
    config = make_config(preset, vocab, info, args.max_position_embeddings, overrides)
    model = Qwen3_5ForCausalLM(config).to(device)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.model.embed_tokens.weight.numel()
    save_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(args.save_dtype)
    if save_dtype is None:
        save_dtype = torch.float32 if n_params * 4 < SAVE_LIMIT_BYTES else torch.bfloat16
    log(f"model: {n_params / 1e6:.2f} M parameters ({(n_params - n_embed) / 1e6:.2f} M without the tied "
        f"embedding), layers {config.layer_types.count('linear_attention')} linear + "
        f"{config.layer_types.count('full_attention')} full, save as {str(save_dtype).split('.')[-1]} "
        f"(~{n_params * (4 if save_dtype == torch.float32 else 2) / 1e6:.0f} MB)")

    opt_kwargs = dict(lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    if cuda:
        opt_kwargs["fused"] = True
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), **opt_kwargs)

    def forward_loss(x, y):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(input_ids=x, use_cache=False).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    step_fn = torch.compile(forward_loss) if use_compile else forward_loss
    eval_batch = args.batch_size

    # The starting point, and how long an evaluation takes (to keep that much time back at the end).
    t0 = time.time()
    evals = []
    first = evaluate(model, test_rows, eval_batch, device, amp_dtype, bytes_per_token)
    eval_seconds = time.time() - t0
    evals.append(dict(first, step=0, tokens=0, elapsed_s=round(time.time() - T_PROCESS_START, 1)))
    log(f"eval step 0: loss {first['loss']:.4f} ppl {first['ppl']:.1f} ({eval_seconds:.1f} s)")
    # Kept back for the final evaluation, the save and the CPU probe (about 2 s for the full model on the
    # GPU machine); refined with the duration of each later (warm) evaluation.
    save_seconds = 3.0 if args.no_save else 12.0
    budget_end = T_PROCESS_START + args.minutes * 60 if args.minutes else None
    deadline = budget_end - 2.0 * eval_seconds - save_seconds if budget_end else None

    tokens_per_step = args.batch_size * args.seq_len
    curve = []
    step = 0
    tokens = 0
    loss_acc = torch.zeros((), device=device)
    loss_n = 0
    all_losses = []  # every step's loss in smoke mode (a sync per step), else the first three
    t_train_start = None
    compile_seconds = None
    last_log_t, last_log_tokens = time.time(), 0
    next_eval = 0.25
    steady = []  # (seconds, tokens) between progress lines after the first
    stop_reason = None
    while True:
        now = time.time()
        if t_train_start is not None:
            p_time = (now - t_train_start) / max(1e-9, deadline - t_train_start) if deadline else 0.0
            p_steps = step / args.max_steps if args.max_steps else 0.0
            progress = max(p_time, p_steps)
        else:
            progress = 0.0
        if args.max_steps is not None and step >= args.max_steps:
            stop_reason = "max_steps"
            break
        if deadline is not None and now >= deadline:
            stop_reason = "time budget"
            break
        lr = lr_at(step, progress, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = train_data.next(args.batch_size)
        try:
            loss = step_fn(x, y)
        except Exception as e:  # noqa: BLE001 - any compiler failure: carry on uncompiled
            if step_fn is forward_loss:
                raise
            log(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); running eager")
            torch._dynamo.reset()  # loaded by torch.compile
            step_fn = forward_loss
            use_compile = False
            loss = step_fn(x, y)
        loss.backward()
        if args.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += tokens_per_step
        loss_acc += loss.detach()
        loss_n += 1
        if smoke or step <= 3:
            all_losses.append(float(loss.detach()))
        if t_train_start is None:
            if cuda:
                torch.cuda.synchronize()
            t_train_start = time.time()
            compile_seconds = t_train_start - now
            last_log_t, last_log_tokens = t_train_start, tokens
            log(f"step 1 took {compile_seconds:.1f} s ({'compiled' if use_compile else 'eager'}); loss "
                f"{float(loss.detach()):.4f}")
            if deadline is not None and deadline - t_train_start < 10:
                log("warning: less than 10 s of the budget left after the first step")
        now = time.time()
        final_step = (args.max_steps is not None and step >= args.max_steps) or \
            (deadline is not None and now >= deadline)
        if tokens > last_log_tokens and (now - last_log_t >= args.log_seconds or final_step or
                                         (smoke and step % 10 == 0)):
            mean_loss = float(loss_acc) / max(1, loss_n)
            dt = time.time() - last_log_t
            tps = (tokens - last_log_tokens) / max(1e-9, dt)
            if step > 1 and tokens > last_log_tokens:
                steady.append((dt, tokens - last_log_tokens))
            if deadline is not None:
                eta = max(0.0, deadline - time.time())
            else:
                eta = (args.max_steps - step) * (time.time() - t_train_start) / max(1, step - 1)
            elapsed = time.time() - T_PROCESS_START
            curve.append([step, tokens, round(mean_loss, 5), lr, round(elapsed, 2)])
            log(f"step {step:6d}  loss {mean_loss:.4f}  lr {lr:.2e}  {tps:,.0f} tok/s  "
                f"epoch {tokens / train_ids.size:.2f}  ETA {eta:5.0f} s")
            if not math.isfinite(mean_loss):
                raise SystemExit("loss is not finite: stopping without saving")
            loss_acc.zero_()
            loss_n = 0
            last_log_t, last_log_tokens = time.time(), tokens
        if progress >= next_eval and next_eval < 1.0 and not final_step:
            t_eval = time.time()
            r = evaluate(model, test_rows, eval_batch, device, amp_dtype, bytes_per_token)
            evals.append(dict(r, step=step, tokens=tokens, elapsed_s=round(time.time() - T_PROCESS_START, 1)))
            log(f"eval step {step}: loss {r['loss']:.4f} ppl {r['ppl']:.2f} bpb {r['bits_per_byte']:.3f}")
            next_eval += 0.25
            eval_seconds = time.time() - t_eval
            last_log_t += eval_seconds  # the evaluation's time is not training throughput
            if budget_end is not None:
                deadline = budget_end - 2.0 * eval_seconds - save_seconds
    train_seconds = time.time() - (t_train_start or time.time())

    final = evaluate(model, test_rows, eval_batch, device, amp_dtype, bytes_per_token)
    evals.append(dict(final, step=step, tokens=tokens, elapsed_s=round(time.time() - T_PROCESS_START, 1)))
    log(f"final: {step} steps, {tokens:,} tokens ({tokens / train_ids.size:.2f} epochs) in {train_seconds:.0f} s "
        f"({stop_reason}); held-out loss {final['loss']:.4f} ppl {final['ppl']:.2f} bpb "
        f"{final['bits_per_byte']:.3f}")
    steady_tps = sum(t for _, t in steady) / max(1e-9, sum(s for s, _ in steady)) if steady else None

    result = {
        "model": {"preset": preset, "parameters": n_params, "parameters_without_embedding": n_params - n_embed,
                  "vocab_size": vocab, "tokenizer_size": tokenizer_size, "layer_types": config.layer_types,
                  "config": {k: v for k, v in config.to_dict().items() if k in (
                      set(PRESETS["full"]) | {"rope_parameters", "max_position_embeddings", "tie_word_embeddings"})},
                  "save_dtype": str(save_dtype).split(".")[-1]},
        "data": info,
        "args": vars(args),
        "device": {"type": device.type,
                   "name": torch.cuda.get_device_name(device) if cuda else (platform.processor() or "cpu"),
                   "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "transformers": transformers.__version__, "compiled": use_compile,
                   "autocast": str(amp_dtype).split(".")[-1] if amp_dtype else None},
        "steps": step,
        "tokens": tokens,
        "epochs": tokens / train_ids.size,
        "stop_reason": stop_reason,
        "seconds": {"total": None, "train": round(train_seconds, 2),
                    "first_step": round(compile_seconds or 0.0, 2), "eval": round(eval_seconds, 2)},
        "tokens_per_second": steady_tps,
        "seconds_per_step": (tokens_per_step / steady_tps) if steady_tps else None,
        "loss_curve": curve,
        "evals": evals,
        "final": {"test_loss": final["loss"], "test_ppl": final["ppl"], "test_bits_per_byte": final["bits_per_byte"],
                  "train_loss_last": curve[-1][2] if curve else None},
    }
    if smoke:
        result["smoke_losses"] = all_losses
    ok = True
    if smoke:
        head = sum(all_losses[:3]) / 3
        tail = sum(all_losses[-5:]) / 5
        ok = tail < 0.85 * head
        log(f"smoke: loss {head:.3f} (first 3 steps) -> {tail:.3f} (last 5): "
            f"{'decreased' if ok else 'DID NOT DECREASE ENOUGH'}")

    if not args.no_save:
        t_save = time.time()
        prompt = [int(t) for t in test_ids[:PROBE_PROMPT_TOKENS]]
        save_checkpoint(model, config, args.out, data_dir, info, save_dtype)
        ref, result["probe"] = probe(model, prompt, save_dtype)
        loaded_class, diff = reload_check(args.out, ref, prompt)
        result["reload"] = {"class": loaded_class, "max_abs_logit_diff": diff}
        result["seconds"]["save"] = round(time.time() - t_save, 2)
        size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
        log(f"saved {args.out}: model.safetensors {size / 1e6:.1f} MB; reloaded as {loaded_class}, logits "
            f"differ by {diff:.2e}; greedy probe {result['probe']['greedy_ids'][:8]}...")
    result["seconds"]["total"] = round(time.time() - T_PROCESS_START, 2)
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump(result, f, indent=1)
    if smoke and not args.data:
        shutil.rmtree(data_dir, ignore_errors=True)
    log(f"done in {result['seconds']['total']:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

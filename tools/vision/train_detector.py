#!/usr/bin/env python3
"""Trains the PADRe detector (or its softmax-attention baseline) on the synthetic shapes dataset.

    train_detector.py --mixer padre   --device cuda --minutes 4 --out runs/padre   --seed 0   # the real run
    train_detector.py --mixer softmax --device cuda --minutes 4 --out runs/softmax --seed 0   # the baseline
    train_detector.py --smoke --out DIR                                                     # CPU, seconds

Needs only torch and numpy (safetensors is used when installed, else an own writer; no pycocotools):
the mAP is tools/vision/coco_map.py, a numpy copy of COCOeval.

Data: synth_dataset.generate_image(seed, "train", i, random_size=True) for i = 0, 1, 2, ... (half of
the images 128 x 128, half of random size and aspect, letterboxed to S in the workers). A pool of
--workers processes (numpy only) generates chunks of --chunk images continuously into a ring buffer of
--buffer-images letterboxed uint8 images that lives on the device; every step samples a batch uniformly
from what the buffer holds, so the step never waits for generation (the buffer refills with fresh
images as fast as the workers go; "unique images" in the log counts them). On the device: random
horizontal / vertical flips inside the letterboxed content, a random permutation of the RGB channels,
padding set to exactly 0.5, (x - mean) / std.

Targets (CenterNet on the G x G grid): for each object the centre cell (floor(c / P)) of its box centre c
gets a gaussian peak of 1 in its class channel (radius from CenterNet's gaussian_radius at overlap 0.7, in
cells; sigma = (2r + 1) / 6; overlapping gaussians of a class take the max); loss = focal loss (alpha 2,
beta 4) over the heatmap logits, normalised by the number of objects, + --size-weight * L1 of
(w / S, h / S) + --offset-weight * L1 of (c / P - cell) at the centre cells (raw head outputs).

Optimisation: AdamW (fused on CUDA; no weight decay on biases, norms, position embedding and PADRe's
mix_global), linear warmup over --warmup-frac of the budget, cosine decay to --min-lr-ratio, gradient
clipping, bf16 autocast on CUDA, an exponential moving average of the weights (--ema-decay; the EMA is
what is exported). The schedule follows the clock: progress = training time / (--minutes), so every run
with the same --minutes trains for the same time (periodic evaluation and checkpoints pause the clock)
and stops on time; --max-steps caps the steps as well (progress = max of the two fractions).

Output (--out): config.json + model.safetensors (fp16) as docs/vision.md specifies; train_log.json (loss
curve, steps, images seen, unique images, times, device, arguments, periodic val mAP and the final val
mAP@[.5:.95] / mAP@.5 of the exported fp16 weights computed in fp32 on 500 val images at 128 x 128 and
200 at 160 x 120); val_gt.json + val_predictions.json (COCO, the 128 x 128 val set, for cross-checks with
eval_coco.py); checkpoint.pt (fp32 model, EMA, optimiser, step) every --ckpt-every-min minutes and at
the end.
The val images are synth_dataset.py --split val --seed 7 (--width 128 --height 128) and --split val160x120
--seed 7 --width 160 --height 120, so the C++ side can be scored on the very same files.
"""
import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time

T_PROCESS_START = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import coco_map  # noqa: E402
import padre_detector as pd  # noqa: E402
import synth_dataset as synth  # noqa: E402

MAX_OBJ = synth.MAX_OBJ


def log(msg):
    print(f"[{time.time() - T_PROCESS_START:7.1f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------------
# Data: workers (numpy only) and the device ring buffer


def make_chunk(seed, image_size, start, count):
    """Training images start .. start+count-1, letterboxed: (uint8 [n, S, S, 3], boxes float32 [n, MAX_OBJ, 4]
    in letterbox pixels, classes int8 [n, MAX_OBJ] (-1 = none), content (new_w, new_h) int16 [n, 2])."""
    imgs = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
    boxes = np.zeros((count, MAX_OBJ, 4), dtype=np.float32)
    classes = np.full((count, MAX_OBJ), -1, dtype=np.int8)
    content = np.zeros((count, 2), dtype=np.int16)
    for k in range(count):
        img, anns = synth.generate_image(seed, "train", start + k, random_size=True)
        h, w = img.shape[:2]
        lb, (nw, nh) = synth.letterbox_uint8(img, image_size)
        imgs[k] = lb
        content[k] = (nw, nh)
        sx, sy = nw / w, nh / h
        for j, a in enumerate(anns[:MAX_OBJ]):
            x1, y1, x2, y2 = a["box"]
            boxes[k, j] = (x1 * sx, y1 * sy, x2 * sx, y2 * sy)
            classes[k, j] = a["class_id"]
    return start, imgs, boxes, classes, content


def _worker_init():
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        os.nice(5)
    except OSError:
        pass


class RingData:
    def __init__(self, seed, image_size, capacity, chunk, workers, device):
        self.seed, self.s, self.cap, self.chunk, self.device = seed, image_size, capacity, chunk, device
        self.imgs = torch.empty((capacity, image_size, image_size, 3), dtype=torch.uint8, device=device)
        self.boxes = torch.zeros((capacity, MAX_OBJ, 4), dtype=torch.float32, device=device)
        self.classes = torch.full((capacity, MAX_OBJ), -1, dtype=torch.int64, device=device)
        self.content = torch.zeros((capacity, 2), dtype=torch.int64, device=device)
        self.next_index = 0        # next generator index to hand out
        self.received = 0          # images written into the buffer
        self.write_pos = 0
        self.pool = None
        self.pending = []
        self.workers = workers
        if workers > 0:
            # fork before any CUDA work; the workers run numpy only.
            self.pool = mp.get_context("fork").Pool(workers, initializer=_worker_init)
            for _ in range(3 * workers):
                self._submit()

    def _submit(self):
        self.pending.append(self.pool.apply_async(make_chunk, (self.seed, self.s, self.next_index, self.chunk)))
        self.next_index += self.chunk

    def _store(self, result):
        _, imgs, boxes, classes, content = result
        n = len(imgs)
        pos = self.write_pos
        first = min(n, self.cap - pos)
        parts = [(slice(0, first), slice(pos, pos + first))]
        if first < n:
            parts.append((slice(first, n), slice(0, n - first)))
        for src, dst in parts:
            self.imgs[dst] = torch.from_numpy(imgs[src]).to(self.device, non_blocking=False)
            self.boxes[dst] = torch.from_numpy(boxes[src]).to(self.device)
            self.classes[dst] = torch.from_numpy(classes[src].astype(np.int64)).to(self.device)
            self.content[dst] = torch.from_numpy(content[src].astype(np.int64)).to(self.device)
        self.write_pos = (pos + n) % self.cap
        self.received += n

    def fill_sync(self, count):
        """Generate `count` images in this process (no workers)."""
        while self.received < count:
            n = min(self.chunk, count - self.received)
            self._store(make_chunk(self.seed, self.s, self.next_index, n))
            self.next_index += n

    def poll(self, wait_for=0):
        """Move finished chunks into the buffer; with wait_for, block until that many images are in."""
        if self.pool is None:
            return
        while True:
            done = [r for r in self.pending if r.ready()]
            for r in done:
                self.pending.remove(r)
                self._store(r.get())
                self._submit()
            if self.received >= wait_for:
                return
            time.sleep(0.01)

    @property
    def filled(self):
        return min(self.received, self.cap)

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def gaussian_radius(h, w, min_overlap=0.7):
    """CenterNet's gaussian_radius (as published, including its (b + sq) / 2), elementwise."""
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(torch.clamp(b1 * b1 - 4 * c1, min=0))) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + torch.sqrt(torch.clamp(b2 * b2 - 16 * c2, min=0))) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt(torch.clamp(b3 * b3 - 4 * a3 * c3, min=0))) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def make_batch(data, batch, cfg, gen, augment=True):
    """Samples a batch from the ring buffer: (x [B, 3, S, S] normalised, targets dict)."""
    dev = data.device
    s, p = cfg["image_size"], cfg["patch_size"]
    g = s // p
    idx = torch.randint(0, data.filled, (batch,), device=dev, generator=gen)
    x = data.imgs[idx].permute(0, 3, 1, 2).to(torch.float32) / 255.0          # [B, 3, S, S]
    boxes = data.boxes[idx].clone()
    classes = data.classes[idx]
    content = data.content[idx]
    nw, nh = content[:, 0], content[:, 1]
    ar = torch.arange(s, device=dev)
    if augment:
        r = torch.rand((batch, 3), device=dev, generator=gen)
        fx, fy = r[:, 0] < 0.5, r[:, 1] < 0.5
        ix = torch.where(fx[:, None] & (ar[None] < nw[:, None]), nw[:, None] - 1 - ar[None], ar[None])
        iy = torch.where(fy[:, None] & (ar[None] < nh[:, None]), nh[:, None] - 1 - ar[None], ar[None])
        x = x.gather(3, ix[:, None, None, :].expand(batch, 3, s, s))
        x = x.gather(2, iy[:, None, :, None].expand(batch, 3, s, s))
        perm = torch.argsort(torch.rand((batch, 3), device=dev, generator=gen), dim=1)
        x = x.gather(1, perm[:, :, None, None].expand(batch, 3, s, s))
        fw, fh = nw.to(torch.float32)[:, None], nh.to(torch.float32)[:, None]
        x1, y1, x2, y2 = boxes.unbind(-1)
        x1, x2 = torch.where(fx[:, None], fw - x2, x1), torch.where(fx[:, None], fw - x1, x2)
        y1, y2 = torch.where(fy[:, None], fh - y2, y1), torch.where(fy[:, None], fh - y1, y2)
        boxes = torch.stack([x1, y1, x2, y2], dim=-1)
    pad = (ar[None, :] >= nw[:, None])[:, None, None, :] | (ar[None, :] >= nh[:, None])[:, None, :, None]
    x = torch.where(pad, torch.full_like(x, 0.5), x)
    mean = torch.tensor(cfg["pixel_mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(cfg["pixel_std"], device=dev).view(1, 3, 1, 1)
    x = (x - mean) / std
    # Targets on the grid.
    valid = classes >= 0
    cxp = (boxes[..., 0] + boxes[..., 2]) / 2
    cyp = (boxes[..., 1] + boxes[..., 3]) / 2
    bw = boxes[..., 2] - boxes[..., 0]
    bh = boxes[..., 3] - boxes[..., 1]
    gxf, gyf = cxp / p, cyp / p
    gx = torch.clamp(torch.floor(gxf), 0, g - 1)
    gy = torch.clamp(torch.floor(gyf), 0, g - 1)
    radius = torch.clamp(torch.floor(gaussian_radius(bh / p, bw / p)), min=0)
    sigma = (2 * radius + 1) / 6
    grid = torch.arange(g, device=dev, dtype=torch.float32)
    dx2 = (grid[None, None, None, :] - gx[..., None, None]) ** 2
    dy2 = (grid[None, None, :, None] - gy[..., None, None]) ** 2
    gauss = torch.exp(-(dx2 + dy2) / (2 * sigma[..., None, None] ** 2)) * valid[..., None, None]   # [B, M, G, G]
    onehot = F.one_hot(classes.clamp(min=0), cfg["num_classes"]).to(torch.float32) * valid[..., None]
    heat = (gauss[:, :, None] * onehot[..., None, None]).amax(dim=1)                             # [B, C, G, G]
    bi, mi = torch.nonzero(valid, as_tuple=True)
    ci, gyi, gxi = classes[bi, mi], gy[bi, mi].long(), gx[bi, mi].long()
    pos = torch.zeros_like(heat, dtype=torch.bool)
    pos[bi, ci, gyi, gxi] = True
    heat[bi, ci, gyi, gxi] = 1.0
    tgt = {"heat": heat, "pos": pos, "b": bi, "gy": gyi, "gx": gxi,
           "size": torch.stack([bw[bi, mi] / s, bh[bi, mi] / s], dim=1),
           "offset": torch.stack([gxf[bi, mi] - gx[bi, mi], gyf[bi, mi] - gy[bi, mi]], dim=1)}
    return x, tgt


def detection_loss(outputs, tgt, size_weight, offset_weight):
    heat_logits, size, offset = (o.float() for o in outputs)
    pos = tgt["pos"].to(torch.float32)
    neg_w = (1 - tgt["heat"]).pow(4) * (1 - pos)
    prob = torch.sigmoid(heat_logits)
    pos_loss = -(F.logsigmoid(heat_logits) * (1 - prob).pow(2) * pos).sum()
    neg_loss = -(F.logsigmoid(-heat_logits) * prob.pow(2) * neg_w).sum()
    npos = torch.clamp(pos.sum(), min=1.0)
    heat_loss = (pos_loss + neg_loss) / npos
    b, gy, gx = tgt["b"], tgt["gy"], tgt["gx"]
    if len(b):
        size_pred = size[b, :, gy, gx]
        off_pred = offset[b, :, gy, gx]
        size_loss = F.l1_loss(size_pred, tgt["size"])
        off_loss = F.l1_loss(off_pred, tgt["offset"])
    else:
        size_loss = off_loss = heat_logits.sum() * 0
    total = heat_loss + size_weight * size_loss + offset_weight * off_loss
    return total, torch.stack([total.detach(), heat_loss.detach(), size_loss.detach(), off_loss.detach()])


# ----------------------------------------------------------------------------------------------------
# Evaluation


class ValSet:
    """Fixed validation images: letterboxed inputs, infos and the COCO ground truth."""

    def __init__(self, cfg, split, seed, count, width, height):
        self.split, self.seed, self.width, self.height = split, seed, width, height
        entries, xs, self.infos = [], [], []
        for i in range(count):
            img, anns = synth.generate_image(seed, split, i, width, height)
            x, info = pd.letterbox(img, cfg)
            xs.append(x)
            self.infos.append(info)
            entries.append((i, width, height, anns, synth.image_file_name(split, i)))
        self.x = torch.cat(xs) if xs else torch.zeros(0)
        self.gt = synth.make_coco(split, seed, entries, {"start": 0, "count": count, "width": width,
                                                         "height": height})

    def predict(self, model, device, batch=100, threshold=0.0):
        """COCO results of the model (run in true fp32: TF32 off while predicting)."""
        preds = []
        model.eval()
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            return self._predict(model, device, batch, threshold, preds)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32

    def _predict(self, model, device, batch, threshold, preds):
        with torch.no_grad():
            for i0 in range(0, len(self.x), batch):
                heat, size, off = model(self.x[i0:i0 + batch].to(device))
                heat, size, off = heat.float().cpu(), size.float().cpu(), off.float().cpu()
                for j in range(len(heat)):
                    dets = pd.decode(heat[j], size[j], off[j], model.config, self.infos[i0 + j], threshold)
                    preds.extend(coco_map.detections_to_coco(i0 + j + 1, dets))
        return preds

    def evaluate(self, model, device):
        preds = self.predict(model, device)
        r = coco_map.evaluate(self.gt, preds)
        return {"map": r["map"], "map50": r["map50"], "map75": r["map75"],
                "per_class_ap": {k: v["ap"] for k, v in r["per_class"].items()}}, preds


# ----------------------------------------------------------------------------------------------------
# Training


def build_config(args):
    cfg = pd.make_config(mixer=args.mixer, image_size=args.image_size, patch_size=args.patch_size,
                         hidden_size=args.hidden_size, num_layers=args.num_layers,
                         mlp_hidden_size=args.mlp_hidden_size, num_heads=args.num_heads,
                         padre_degree=args.padre_degree, padre_kernel_size=args.padre_kernel_size)
    return cfg


def param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.dim() >= 2 and name != "pos_embed":
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(progress, warmup, min_ratio):
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    t = min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def atomic_torch_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def parse_args(argv=None):
    d = pd.DEFAULT_CONFIG
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mixer", choices=["padre", "softmax"], default="padre")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--minutes", type=float, default=4.0, help="training time budget (the schedule follows it)")
    ap.add_argument("--max-steps", type=int, default=0, help="also stop after this many steps (0: no cap)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0, help="model init, batch sampling and training data seed")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run: tiny model, 30 steps, small val")
    # Model (docs/vision.md defaults)
    ap.add_argument("--image-size", type=int, default=d["image_size"])
    ap.add_argument("--patch-size", type=int, default=d["patch_size"])
    ap.add_argument("--hidden-size", type=int, default=d["hidden_size"])
    ap.add_argument("--num-layers", type=int, default=d["num_layers"])
    ap.add_argument("--mlp-hidden-size", type=int, default=d["mlp_hidden_size"])
    ap.add_argument("--num-heads", type=int, default=d["num_heads"])
    ap.add_argument("--padre-degree", type=int, default=d["padre_degree"])
    ap.add_argument("--padre-kernel-size", type=int, default=d["padre_kernel_size"])
    # Optimisation
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup-frac", type=float, default=0.03)
    ap.add_argument("--min-lr-ratio", type=float, default=0.02)
    ap.add_argument("--clip-grad", type=float, default=2.0)
    ap.add_argument("--ema-decay", type=float, default=0.999, help="0 disables the EMA")
    ap.add_argument("--size-weight", type=float, default=5.0)
    ap.add_argument("--offset-weight", type=float, default=1.0)
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (off by default)")
    # Data
    ap.add_argument("--workers", type=int, default=-1, help="generator processes (-1: cores - 1 on cuda, 0 on cpu)")
    ap.add_argument("--buffer-images", type=int, default=0, help="ring buffer size (0: 300000 on cuda, 2048 on cpu)")
    ap.add_argument("--chunk", type=int, default=128, help="images per worker task")
    ap.add_argument("--val-seed", type=int, default=7)
    ap.add_argument("--val-count", type=int, default=500)
    ap.add_argument("--val-wide-count", type=int, default=200)
    ap.add_argument("--eval-every-min", type=float, default=1.0, help="periodic val mAP (on 200 images)")
    ap.add_argument("--ckpt-every-min", type=float, default=1.0)
    ap.add_argument("--log-every-sec", type=float, default=10.0)
    ap.add_argument("--curve-every", type=int, default=25, help="loss curve point every N steps (mean of them)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device = "cpu"
        args.image_size, args.patch_size, args.hidden_size, args.num_layers = 64, 8, 32, 2
        args.mlp_hidden_size, args.num_heads, args.padre_kernel_size = 64, 2, 5
        args.batch_size, args.lr, args.warmup_frac = 16, 3e-3, 0.1
        args.max_steps = args.max_steps or 30
        args.minutes = min(args.minutes, 2.0)
        args.buffer_images = args.buffer_images or 256
        args.val_count, args.val_wide_count = min(args.val_count, 24), min(args.val_wide_count, 8)
        args.eval_every_min = 1e9
        args.ckpt_every_min = 1e9
        args.log_every_sec = 1.0
        args.curve_every = 5
        args.workers = 0 if args.workers < 0 else args.workers
    if args.workers < 0:
        args.workers = max(1, (os.cpu_count() or 2) - 1) if args.device == "cuda" else 0
    if args.buffer_images <= 0:
        args.buffer_images = 300000 if args.device == "cuda" else 2048
    return args


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    cfg = build_config(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but CUDA is not available")
    # Workers fork before CUDA is touched.
    data = RingData(args.seed, cfg["image_size"], args.buffer_images, args.chunk, args.workers, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    model = pd.init_for_training(pd.PadreDetector(cfg)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{cfg['mixer']} detector: {n_params:,} parameters, grid {model.grid}, device {device}"
        f" ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}),"
        f" workers {args.workers}, buffer {args.buffer_images}")
    ema = None
    if args.ema_decay > 0:
        ema = [p.detach().clone() for p in model.parameters()]
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.99), fused=fused)
    fwd = torch.compile(model) if args.compile else model
    t0 = time.time()
    val_small = ValSet(cfg, "val", args.val_seed, min(200, args.val_count), 128, 128)
    log(f"val set ready ({len(val_small.x)} images, {time.time() - t0:.1f}s)")
    # Initial data.
    t0 = time.time()
    if args.workers == 0:
        data.fill_sync(args.buffer_images)
    else:
        data.poll(wait_for=min(args.buffer_images, 4 * args.batch_size))
    log(f"data: {data.received} images in {time.time() - t0:.1f}s; training for {args.minutes:g} min"
        + (f" or {args.max_steps} steps" if args.max_steps else ""))
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed + 1)
    budget = args.minutes * 60.0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    step, images_seen, train_time = 0, 0, 0.0
    curve, evals = [], []
    acc = torch.zeros(4, device=device)
    acc_n = 0
    last_eval = last_ckpt = 0.0
    log_t, log_train, log_imgs, log_recv = time.time(), 0.0, 0, data.received
    seg_start = time.time()
    params = list(model.parameters())

    def progress():
        f = (train_time + (time.time() - seg_start)) / budget
        if args.max_steps:
            f = max(f, step / args.max_steps)
        return f

    def ema_state():
        sd = model.state_dict()
        if ema is None:
            return sd
        names = [n for n, _ in model.named_parameters()]
        out = dict(sd)
        for n, e in zip(names, ema):
            out[n] = e
        return out

    def print_progress(now, cur_train, lr):
        # img/s over training time (evaluation pauses excluded); generation over wall time.
        c = curve[-1]
        ips = (images_seen - log_imgs) / max(cur_train - log_train, 1e-9)
        gps = (data.received - log_recv) / max(now - log_t, 1e-9)
        eta = max(0.0, budget - cur_train)
        if args.max_steps:
            eta = min(eta, (args.max_steps - step) * cur_train / max(step, 1))
        log(f"step {step} | loss {c['loss']:.4f} (heat {c['heat']:.4f} size {c['size']:.4f} off {c['offset']:.4f})"
            f" | lr {lr:.2e} | {ips:,.0f} img/s | gen {gps:,.0f} img/s, buffer {data.filled}/{data.cap}"
            f" | {cur_train:.0f}s of {budget:.0f}s, ETA {eta:.0f}s")

    def evaluate_now(tag):
        model_eval = pd.PadreDetector(cfg).to(device)
        model_eval.load_state_dict(ema_state())
        r, _ = val_small.evaluate(model_eval, device)
        r.update({"step": step, "train_time_s": round(train_time, 2), "images_seen": images_seen, "tag": tag})
        evals.append(r)
        log(f"val ({len(val_small.x)} images, {'EMA' if ema is not None else 'raw'} weights): "
            f"mAP {r['map']:.4f}  mAP50 {r['map50']:.4f}")

    while True:
        data.poll()
        f = progress()
        if f >= 1.0:
            break
        lr = args.lr * lr_factor(f, args.warmup_frac, args.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        x, tgt = make_batch(data, args.batch_size, cfg, gen, augment=not args.no_augment)
        with autocast:
            outputs = fwd(x)
        loss, parts = detection_loss(outputs, tgt, args.size_weight, args.offset_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
        opt.step()
        if ema is not None:
            decay = min(args.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        step += 1
        images_seen += args.batch_size
        acc += parts
        acc_n += 1
        if acc_n == args.curve_every or (args.max_steps and step >= args.max_steps):
            vals = (acc / acc_n).tolist()
            now_t = train_time + time.time() - seg_start
            curve.append({"step": step, "train_time_s": round(now_t, 2), "lr": lr, "loss": vals[0],
                          "heat": vals[1], "size": vals[2], "offset": vals[3]})
            acc.zero_()
            acc_n = 0
        now = time.time()
        cur_train = train_time + now - seg_start
        if curve and (now - log_t >= args.log_every_sec):
            print_progress(now, cur_train, lr)
            log_t, log_train, log_imgs, log_recv = now, cur_train, images_seen, data.received
        due_eval = cur_train - last_eval >= args.eval_every_min * 60
        due_ckpt = cur_train - last_ckpt >= args.ckpt_every_min * 60
        if due_eval or due_ckpt:
            train_time = cur_train       # pause the clock
            if due_eval:
                evaluate_now("periodic")
                last_eval = train_time
            if due_ckpt:
                atomic_torch_save({"model": model.state_dict(), "ema": ema_state(), "opt": opt.state_dict(),
                                   "step": step, "config": cfg, "args": vars(args)},
                                  os.path.join(args.out, "checkpoint.pt"))
                log(f"checkpoint at step {step}")
                last_ckpt = train_time
            seg_start = time.time()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_time += time.time() - seg_start
    if acc_n:
        vals = (acc / acc_n).tolist()
        curve.append({"step": step, "train_time_s": round(train_time, 2), "lr": lr, "loss": vals[0],
                      "heat": vals[1], "size": vals[2], "offset": vals[3]})
    if step and curve:
        print_progress(time.time(), train_time, lr)
    unique = data.received
    data.close()
    atomic_torch_save({"model": model.state_dict(), "ema": ema_state(), "opt": opt.state_dict(), "step": step,
                       "config": cfg, "args": vars(args)}, os.path.join(args.out, "checkpoint.pt"))
    log(f"training done: {step} steps, {images_seen:,} images seen ({unique:,} unique generated), {train_time:.1f}s")

    # Export (EMA weights, fp16) and evaluate what was written, in fp32.
    t_export = time.time()
    final = pd.PadreDetector(cfg)
    final.load_state_dict({k: v.detach().cpu() for k, v in ema_state().items()})
    pd.save_detector(final, args.out, dtype=torch.float16)
    reloaded = pd.load_detector(args.out, device=device)
    results = {}
    val = ValSet(cfg, "val", args.val_seed, args.val_count, 128, 128)
    r, preds = val.evaluate(reloaded, device)
    results["val_128x128"] = dict(r, images=args.val_count, split="val", seed=args.val_seed)
    with open(os.path.join(args.out, "val_gt.json"), "w", encoding="utf-8") as f:
        json.dump(val.gt, f)
    with open(os.path.join(args.out, "val_predictions.json"), "w", encoding="utf-8") as f:
        json.dump(preds, f)
    if args.val_wide_count:
        wide = ValSet(cfg, "val160x120", args.val_seed, args.val_wide_count, 160, 120)
        r, _ = wide.evaluate(reloaded, device)
        results["val_160x120"] = dict(r, images=args.val_wide_count, split="val160x120", seed=args.val_seed)
    eval_time = time.time() - t_export
    for k, r in results.items():
        log(f"final {k} ({r['images']} images, exported fp16 weights): mAP@[.5:.95] {r['map']:.4f}  mAP@.5 {r['map50']:.4f}")
    train_log = {
        "mixer": cfg["mixer"], "config": cfg, "parameters": n_params, "args": vars(args),
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "steps": step, "batch_size": args.batch_size, "images_seen": images_seen, "unique_images": unique,
        "train_time_s": round(train_time, 2), "images_per_s": images_seen / max(train_time, 1e-9),
        "eval_export_time_s": round(eval_time, 2), "total_time_s": round(time.time() - T_PROCESS_START, 2),
        "final_loss": curve[-1] if curve else None,
        "val": results, "val_map": results["val_128x128"]["map"], "val_map50": results["val_128x128"]["map50"],
        "periodic_val": evals, "loss_curve": curve, "weights": "EMA" if ema is not None else "raw",
        "map_tool": "tools/vision/coco_map.py (numpy COCOeval, area all, maxDets 100, decode threshold 0.0)",
    }
    with open(os.path.join(args.out, "train_log.json"), "w", encoding="utf-8") as f:
        json.dump(train_log, f, indent=1)
    log(f"wrote {args.out}/config.json, model.safetensors, train_log.json")
    return train_log


if __name__ == "__main__":
    main()

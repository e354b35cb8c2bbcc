#!/usr/bin/env python3
"""The PADRe detector in PyTorch, exactly as docs/vision.md specifies it (the reference the C++ network
is tested against), with its pre-processing (letterbox), decoding and file format.

    python padre_detector.py MODEL_DIR IMAGE.png [--threshold 0.3]     # detections as JSON

Model: PadreDetector(config) with config a dict holding docs/vision.md's config.json keys; state_dict()
names are the documented safetensors names. forward(x [B, 3, S, S]) returns (heatmap logits [B, C, G, G],
size [B, 2, G, G], offset [B, 2, G, G]), the raw head outputs (no activation on size or offset).

Choices where docs/vision.md is silent (the C++ side must make the same ones):
- tokens are the patch grid in row-major order: token n = gy * G + gx (Conv2d output flattened), and the
  head's D x G x G map is the same order transposed back; pos_embed is added after flattening;
- PADRe's RMS normalisation uses config norm_eps (like the LayerNorms): T = H * rsqrt(mean_D(H^2) + eps) * w;
  mean_N is over all N tokens (letterbox padding included); the depthwise convolution zero-pads the grid;
- the softmax mixer scales scores by 1 / sqrt(D / num_heads), heads concatenated in head order before `out`;
- the size and offset heads have no activation: decoding uses the raw conv outputs;
- letterbox: uint8 RGB -> float / 255 -> resize with F.interpolate(bilinear, align_corners=False,
  antialias=False) to (new_h, new_w), where the longer side becomes S and the shorter side is
  floor(short * S / long + 0.5) computed in integers (at least 1); no resize when the size is unchanged
  (interpolate is the identity then anyway); placed top-left on an S x S canvas of 0.5; then
  (x - mean) / std per channel. The resize scale used to undo the letterbox is S / max(W, H);
- decoding: peaks are cells whose sigmoid score equals the 3x3 max-pool (stride 1, padding 1, padding
  never wins) of the scores of the same class; only peaks are candidates; candidates are ranked by score,
  descending, ties by the flat index c * G * G + gy * G + gx ascending, and the first 100 kept; box size
  uses max(w, 0), max(h, 0) (negative sizes clamp to 0); box = centre -/+ size / 2; a detection is kept
  when score >= threshold (the fp32 score against the threshold as given); class-wise greedy NMS in the
  letterboxed frame (before clipping), in that rank order, drops a box whose IoU with a kept box of its
  class is > 0.5 (IoU = intersection / union of the
  continuous boxes, area (x2 - x1) * (y2 - y1), 0 when the union is 0); then every coordinate is divided
  by the scale and clipped to [0, W] (x) or [0, H] (y); degenerate (zero-area) boxes are kept. The result
  lists detections by rank (score descending). Arithmetic is fp32.
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_CONFIG = {
    "architecture": "PadreDetector", "mixer": "padre", "image_size": 128, "patch_size": 8,
    "hidden_size": 96, "num_layers": 4, "mlp_hidden_size": 192, "num_heads": 4, "padre_degree": 3,
    "padre_kernel_size": 7, "norm_eps": 1e-6, "num_classes": 4,
    "class_names": ["circle", "square", "triangle", "star"],
    "pixel_mean": [0.5, 0.5, 0.5], "pixel_std": [0.25, 0.25, 0.25],
}
TOP_K = 100
NMS_IOU = 0.5


def make_config(**overrides):
    cfg = json.loads(json.dumps(DEFAULT_CONFIG))
    for k, v in overrides.items():
        if k not in cfg:
            raise KeyError(f"unknown config key {k}")
        cfg[k] = v
    check_config(cfg)
    return cfg


def check_config(cfg):
    if cfg["mixer"] not in ("padre", "softmax"):
        raise ValueError(f"mixer must be padre or softmax, not {cfg['mixer']}")
    if cfg["image_size"] % cfg["patch_size"]:
        raise ValueError("image_size must be a multiple of patch_size")
    if cfg["hidden_size"] % cfg["num_heads"]:
        raise ValueError("hidden_size must be a multiple of num_heads")
    if len(cfg["class_names"]) != cfg["num_classes"]:
        raise ValueError("class_names must have num_classes entries")


# ----------------------------------------------------------------------------------------------------
# Network


class RMSScale(nn.Module):
    """T = H * rsqrt(mean_D(H^2) + eps) * weight (PADRe's per-token normalisation)."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, h):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class PadreMixer(nn.Module):
    """Y_k = X W_k^T + b_k; Z_k = DWConv2d_K(Y_k) + g_k * mean_N(Y_k); H_0 = Z_0, H_k = H_{k-1} * Z_k;
    T_k = RMS-normalised H_k * w_k; out = (sum_k T_k) W_o^T + b_o."""

    def __init__(self, dim, grid, degree=3, kernel_size=7, eps=1e-6):
        super().__init__()
        self.grid = grid
        self.degree = degree
        self.proj = nn.ModuleList([nn.Linear(dim, dim) for _ in range(degree)])
        self.mix = nn.ModuleList([nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)
                                  for _ in range(degree)])
        self.mix_global = nn.ParameterList([nn.Parameter(torch.zeros(dim)) for _ in range(degree)])
        self.norm = nn.ModuleList([RMSScale(dim, eps) for _ in range(degree)])
        self.out = nn.Linear(dim, dim)

    def forward_reference(self, x):
        """The formula term by term (what forward() computes, more slowly)."""
        b, n, d = x.shape
        gh, gw = self.grid
        acc = None
        h = None
        for k in range(self.degree):
            y = self.proj[k](x)                                           # [B, N, D]
            z = self.mix[k](y.transpose(1, 2).reshape(b, d, gh, gw))      # [B, D, Gh, Gw]
            z = z.flatten(2).transpose(1, 2) + self.mix_global[k] * y.mean(dim=1, keepdim=True)
            h = z if k == 0 else h * z
            t = self.norm[k](h)
            acc = t if acc is None else acc + t
        return self.out(acc)

    def forward(self, x):
        # The d projections as one matmul and the d depthwise convolutions as one grouped convolution
        # over d * D channels, run on the token layout itself ([B, Gh, Gw, dD] seen as a channels-last
        # [B, dD, Gh, Gw]: no transposes); the same arithmetic as forward_reference().
        b, n, d = x.shape
        gh, gw = self.grid
        kd = self.degree * d
        w = torch.cat([p.weight for p in self.proj])
        bias = torch.cat([p.bias for p in self.proj])
        y = F.linear(x, w, bias)                                           # [B, N, dD]
        kern = torch.cat([m.weight for m in self.mix])                     # [dD, 1, K, K]
        k = kern.shape[-1]
        z = F.conv2d(y.view(b, gh, gw, kd).permute(0, 3, 1, 2), kern, None, 1, k // 2, 1, kd)
        z = z.permute(0, 2, 3, 1).reshape(b, n, kd)
        z = z + torch.cat(list(self.mix_global)) * y.mean(dim=1, keepdim=True)
        acc = None
        h = None
        for i in range(self.degree):
            zi = z[..., i * d:(i + 1) * d]
            h = zi if i == 0 else h * zi
            t = self.norm[i](h)
            acc = t if acc is None else acc + t
        return self.out(acc)


class SoftmaxMixer(nn.Module):
    """Multi-head self-attention: qkv rows [q; k; v], each split into num_heads blocks."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        hd = d // self.num_heads
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, hd).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)                       # scale 1 / sqrt(hd)
        return self.out(o.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="none"))


class Block(nn.Module):
    def __init__(self, cfg, grid):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["norm_eps"]
        self.norm1 = nn.LayerNorm(d, eps=eps)
        if cfg["mixer"] == "padre":
            self.mixer = PadreMixer(d, grid, cfg["padre_degree"], cfg["padre_kernel_size"], eps)
        else:
            self.mixer = SoftmaxMixer(d, cfg["num_heads"])
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = MLP(d, cfg["mlp_hidden_size"])

    def forward(self, x):
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Head(nn.Module):
    def __init__(self, dim, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.heatmap = nn.Conv2d(dim, num_classes, 1)
        self.size = nn.Conv2d(dim, 2, 1)
        self.offset = nn.Conv2d(dim, 2, 1)

    def forward(self, fmap):
        h = F.relu(self.conv(fmap))
        return self.heatmap(h), self.size(h), self.offset(h)


class PadreDetector(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        check_config(cfg)
        self.config = dict(cfg)
        s, p, d = cfg["image_size"], cfg["patch_size"], cfg["hidden_size"]
        self.grid = (s // p, s // p)
        n = self.grid[0] * self.grid[1]
        self.patch_embed = nn.Conv2d(3, d, kernel_size=p, stride=p)
        self.pos_embed = nn.Parameter(torch.zeros(1, n, d))
        self.blocks = nn.ModuleList([Block(cfg, self.grid) for _ in range(cfg["num_layers"])])
        self.norm = nn.LayerNorm(d, eps=cfg["norm_eps"])
        self.head = Head(d, cfg["num_classes"])

    def features(self, x, return_stages=False):
        """Tokens after the final norm [B, N, D]; with return_stages also the list of the patch embedding
        (+ position) output and every block's output."""
        t = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        stages = [t]
        for blk in self.blocks:
            t = blk(t)
            stages.append(t)
        t = self.norm(t)
        return (t, stages) if return_stages else t

    def forward(self, x):
        t = self.features(x)
        b, n, d = t.shape
        fmap = t.transpose(1, 2).reshape(b, d, *self.grid)
        return self.head(fmap)


def init_for_training(model, heat_prior=0.1):
    """Training initialisation: truncated-normal(0.02) linears and position embedding, zero biases,
    heatmap bias at the prior log(p / (1 - p)), size bias at 0.15 (a mid-size object)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    nn.init.trunc_normal_(model.pos_embed, std=0.02)
    nn.init.constant_(model.head.heatmap.bias, math.log(heat_prior / (1 - heat_prior)))
    nn.init.normal_(model.head.heatmap.weight, std=0.01)
    nn.init.constant_(model.head.size.bias, 0.15)
    nn.init.normal_(model.head.size.weight, std=0.01)
    nn.init.constant_(model.head.offset.bias, 0.5)
    nn.init.normal_(model.head.offset.weight, std=0.01)
    return model


def mixer_flops(mixer, n, d, degree=3, kernel_size=7, num_heads=4):
    """Multiply-add FLOPs (x2) of one mixer on n tokens of width d (matmuls and convolutions only)."""
    if mixer == "padre":
        return 2 * n * d * d * (degree + 1) + 2 * n * d * kernel_size * kernel_size * degree
    return 2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * n * d


# ----------------------------------------------------------------------------------------------------
# Pre-processing


def letterbox_size(width, height, image_size):
    """(new_w, new_h) of the resized image: the longer side becomes S, the shorter
    floor(short * S / long + 0.5) in integers, at least 1."""
    if width >= height:
        return image_size, max(1, (2 * height * image_size + width) // (2 * width))
    return max(1, (2 * width * image_size + height) // (2 * height)), image_size


def letterbox(image, cfg):
    """uint8 RGB [H, W, 3] (numpy or tensor) -> (float32 [1, 3, S, S], info). info: orig_w, orig_h,
    new_w, new_h, scale (= S / max(W, H), what decoding divides by)."""
    s = cfg["image_size"]
    img = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[2] != 3:
        raise ValueError("letterbox expects uint8 [H, W, 3]")
    h, w = int(img.shape[0]), int(img.shape[1])
    nw, nh = letterbox_size(w, h, s)
    x = img.permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 255.0
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
    canvas = torch.full((1, 3, s, s), 0.5, dtype=torch.float32)
    canvas[:, :, :nh, :nw] = x
    mean = torch.tensor(cfg["pixel_mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg["pixel_std"], dtype=torch.float32).view(1, 3, 1, 1)
    info = {"orig_w": w, "orig_h": h, "new_w": nw, "new_h": nh, "scale": s / max(w, h)}
    return (canvas - mean) / std, info


# ----------------------------------------------------------------------------------------------------
# Decoding


def _iou_one_to_many(box, boxes):
    """IoU (fp32) of one [x1, y1, x2, y2] box with each row of boxes [M, 4]; 0 where the union is 0."""
    iw = np.maximum(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), np.float32(0))
    ih = np.maximum(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), np.float32(0))
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, np.float32(1)), np.float32(0))


def decode(heat_logits, size, offset, cfg, info, threshold=0.0, top_k=TOP_K, nms_iou=NMS_IOU,
           with_debug=False):
    """One image's head outputs ([C, G, G], [2, G, G], [2, G, G]) -> detections, a list of
    {"class_id", "class_name", "score", "box": [x1, y1, x2, y2]} in original-image pixels."""
    heat_logits = heat_logits.detach().to(torch.float32).cpu()
    c, gh, gw = heat_logits.shape
    p, s = cfg["patch_size"], cfg["image_size"]
    heat = torch.sigmoid(heat_logits)
    pooled = F.max_pool2d(heat[None], 3, stride=1, padding=1)[0]
    peak = (heat == pooled).reshape(-1)
    flat = heat.reshape(-1)
    cand = torch.nonzero(peak).flatten()                                   # ascending flat index
    order = torch.sort(flat[cand], descending=True, stable=True).indices
    cand = cand[order][:top_k].numpy()
    scores = flat.numpy()[cand]
    size = size.detach().to(torch.float32).cpu().numpy()
    offset = offset.detach().to(torch.float32).cpu().numpy()
    cls = cand // (gh * gw)
    gy = (cand % (gh * gw)) // gw
    gx = cand % gw
    f32 = np.float32
    bw = np.maximum(size[0, gy, gx], f32(0)) * f32(s)
    bh = np.maximum(size[1, gy, gx], f32(0)) * f32(s)
    cx = (gx.astype(f32) + offset[0, gy, gx]) * f32(p)
    cy = (gy.astype(f32) + offset[1, gy, gx]) * f32(p)
    boxes = np.stack([cx - bw / f32(2), cy - bh / f32(2), cx + bw / f32(2), cy + bh / f32(2)], axis=1).astype(f32)
    kept = []
    for i in range(len(cand)):
        if not scores[i] >= threshold:
            continue
        same = [j for j in kept if cls[j] == cls[i]]
        if same and (_iou_one_to_many(boxes[i], boxes[same]) > nms_iou).any():
            continue
        kept.append(i)
    scale = f32(info["scale"])
    lim = np.array([info["orig_w"], info["orig_h"], info["orig_w"], info["orig_h"]], dtype=f32)
    out = []
    for i in kept:
        b = np.minimum(np.maximum(boxes[i] / scale, f32(0)), lim)
        det = {"class_id": int(cls[i]), "class_name": cfg["class_names"][int(cls[i])],
               "score": float(scores[i]), "box": [float(v) for v in b]}
        if with_debug:
            det.update({"cell": [int(gx[i]), int(gy[i])], "letterbox_box": [float(v) for v in boxes[i]]})
        out.append(det)
    return out


@torch.no_grad()
def detect(model, image, threshold=0.3, device="cpu"):
    x, info = letterbox(image, model.config)
    heat, size, off = model(x.to(device))
    return decode(heat[0], size[0], off[0], model.config, info, threshold)


# ----------------------------------------------------------------------------------------------------
# Files: safetensors (own reader/writer; the `safetensors` library is used when installed)

_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
              torch.int32: "I32", torch.uint8: "U8"}
_ST_TORCH = {v: k for k, v in _ST_DTYPES.items()}


def write_safetensors_own(tensors, path, metadata=None):
    """Minimal safetensors writer: 8-byte little-endian header length, JSON header (padded with spaces
    to a multiple of 8), tensors in name order, little-endian, row-major."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_safetensors_own(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        b, e = spec["data_offsets"]
        dt = _ST_TORCH[spec["dtype"]]
        buf = bytearray(data[base + b:base + e])
        t = torch.frombuffer(buf, dtype=torch.uint8) if e > b else torch.empty(0, dtype=torch.uint8)
        out[name] = t.view(dt).reshape(spec["shape"]).clone()
    return out


def write_safetensors(tensors, path, metadata=None):
    try:
        from safetensors.torch import save_file
    except ImportError:
        return write_safetensors_own(tensors, path, metadata)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path, metadata=metadata)


def read_safetensors(path):
    try:
        from safetensors.torch import load_file
    except ImportError:
        return read_safetensors_own(path)
    return load_file(path)


def save_detector(model, out_dir, dtype=torch.float16, state_dict=None):
    """config.json + model.safetensors (tensors cast to `dtype`)."""
    os.makedirs(out_dir, exist_ok=True)
    sd = state_dict if state_dict is not None else model.state_dict()
    tensors = {k: v.detach().to(dtype) for k, v in sd.items()}
    path = os.path.join(out_dir, "model.safetensors")
    write_safetensors(tensors, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(model.config, f, indent=1)
        f.write("\n")


def load_detector(model_dir, device="cpu"):
    """Reads config.json + model.safetensors into an fp32 PadreDetector (strict names and shapes)."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    model = PadreDetector(cfg)
    sd = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    return model.to(device).eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description="run a PADRe detector on one PNG")
    ap.add_argument("model_dir")
    ap.add_argument("image")
    ap.add_argument("--threshold", type=float, default=0.3)
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from synth_dataset import read_png
    img = read_png(args.image)
    img = np.repeat(img[..., :1], 3, axis=2) if img.shape[2] < 3 else img[..., :3]
    model = load_detector(args.model_dir)
    print(json.dumps(detect(model, img, args.threshold), indent=1))


if __name__ == "__main__":
    main()

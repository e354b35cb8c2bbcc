#!/usr/bin/env python3
"""tools/vision/padre_detector.py against docs/vision.md: state_dict names and shapes, output shapes, an
independent term-by-term re-implementation of the whole network from the doc's formulas (float64), the
fused PADRe mixer against its reference form, gradcheck of the mixer, PADRe's cost linear in the number of
tokens (FLOPs counted by torch and by formula; single-thread CPU time at N and 4N), letterbox, decoding (peaks, top-100,
threshold, class-wise NMS, undoing the letterbox), the safetensors files, and make_padre_golden.py.

    python tests/vision_py/test_padre_detector.py          # torch + numpy
"""
import filecmp
import json
import math
import os
import sys
import tempfile
import unittest

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VISION = os.path.join(ROOT, "tools", "vision")
sys.path.insert(0, VISION)
import padre_detector as pd  # noqa: E402

SMALL = dict(image_size=64, patch_size=8, hidden_size=16, num_layers=2, mlp_hidden_size=24, num_heads=2,
             padre_kernel_size=5, pixel_mean=[0.4, 0.5, 0.6], pixel_std=[0.2, 0.25, 0.3])


def documented_names(cfg):
    """docs/vision.md's tensor list, spelled out."""
    d, p, h, c = cfg["hidden_size"], cfg["patch_size"], cfg["mlp_hidden_size"], cfg["num_classes"]
    g = cfg["image_size"] // p
    k, deg = cfg["padre_kernel_size"], cfg["padre_degree"]
    names = {"patch_embed.weight": [d, 3, p, p], "patch_embed.bias": [d], "pos_embed": [1, g * g, d],
             "norm.weight": [d], "norm.bias": [d], "head.conv.weight": [d, d, 3, 3], "head.conv.bias": [d],
             "head.heatmap.weight": [c, d, 1, 1], "head.heatmap.bias": [c], "head.size.weight": [2, d, 1, 1],
             "head.size.bias": [2], "head.offset.weight": [2, d, 1, 1], "head.offset.bias": [2]}
    for i in range(cfg["num_layers"]):
        b = f"blocks.{i}."
        for n in ("norm1", "norm2"):
            names[b + n + ".weight"] = [d]
            names[b + n + ".bias"] = [d]
        names.update({b + "mlp.fc1.weight": [h, d], b + "mlp.fc1.bias": [h], b + "mlp.fc2.weight": [d, h],
                      b + "mlp.fc2.bias": [d], b + "mixer.out.weight": [d, d], b + "mixer.out.bias": [d]})
        if cfg["mixer"] == "padre":
            for j in range(deg):
                names.update({f"{b}mixer.proj.{j}.weight": [d, d], f"{b}mixer.proj.{j}.bias": [d],
                              f"{b}mixer.mix.{j}.weight": [d, 1, k, k], f"{b}mixer.mix_global.{j}": [d],
                              f"{b}mixer.norm.{j}.weight": [d]})
        else:
            names.update({b + "mixer.qkv.weight": [3 * d, d], b + "mixer.qkv.bias": [3 * d]})
    return names


def randomised(cfg, seed=0):
    torch.manual_seed(seed)
    model = pd.PadreDetector(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def doc_forward(sd, cfg, x):
    """The network written out from docs/vision.md with elementary ops (no nn modules)."""
    eps, d, p = cfg["norm_eps"], cfg["hidden_size"], cfg["patch_size"]
    g = cfg["image_size"] // p

    def layer_norm(t, w, b):
        mu = t.mean(-1, keepdim=True)
        var = ((t - mu) ** 2).mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(var + eps) * w + b

    def linear(t, w, b):
        return t @ w.T + b

    def gelu(t):
        return 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))

    bsz = x.shape[0]
    # Patch embedding as explicit patches: token n = gy * G + gx.
    patches = x.reshape(bsz, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(bsz, g * g, 3 * p * p)
    t = patches @ sd["patch_embed.weight"].reshape(d, -1).T + sd["patch_embed.bias"] + sd["pos_embed"]
    for i in range(cfg["num_layers"]):
        b = f"blocks.{i}."
        u = layer_norm(t, sd[b + "norm1.weight"], sd[b + "norm1.bias"])
        if cfg["mixer"] == "padre":
            acc, hprod = 0, None
            for k in range(cfg["padre_degree"]):
                y = linear(u, sd[f"{b}mixer.proj.{k}.weight"], sd[f"{b}mixer.proj.{k}.bias"])
                grid = y.transpose(1, 2).reshape(bsz, d, g, g)
                kk = cfg["padre_kernel_size"]
                w = sd[f"{b}mixer.mix.{k}.weight"]
                padded = F.pad(grid, (kk // 2,) * 4)
                z = torch.zeros_like(grid)
                for dy in range(kk):
                    for dx in range(kk):
                        z = z + padded[:, :, dy:dy + g, dx:dx + g] * w[:, 0, dy, dx].view(1, d, 1, 1)
                z = z.reshape(bsz, d, g * g).transpose(1, 2) + sd[f"{b}mixer.mix_global.{k}"] * y.mean(1, keepdim=True)
                hprod = z if k == 0 else hprod * z
                acc = acc + hprod / torch.sqrt((hprod ** 2).mean(-1, keepdim=True) + eps) * sd[f"{b}mixer.norm.{k}.weight"]
            mixed = linear(acc, sd[b + "mixer.out.weight"], sd[b + "mixer.out.bias"])
        else:
            nh = cfg["num_heads"]
            hd = d // nh
            qkv = linear(u, sd[b + "mixer.qkv.weight"], sd[b + "mixer.qkv.bias"])
            q, k_, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
            heads = []
            for hh in range(nh):
                sl = slice(hh * hd, (hh + 1) * hd)
                att = torch.softmax(q[..., sl] @ k_[..., sl].transpose(1, 2) / math.sqrt(hd), dim=-1)
                heads.append(att @ v[..., sl])
            mixed = linear(torch.cat(heads, -1), sd[b + "mixer.out.weight"], sd[b + "mixer.out.bias"])
        t = t + mixed
        u = layer_norm(t, sd[b + "norm2.weight"], sd[b + "norm2.bias"])
        t = t + linear(gelu(linear(u, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])), sd[b + "mlp.fc2.weight"],
                       sd[b + "mlp.fc2.bias"])
    t = layer_norm(t, sd["norm.weight"], sd["norm.bias"])
    fmap = t.transpose(1, 2).reshape(bsz, d, g, g)
    hmap = F.relu(F.conv2d(fmap, sd["head.conv.weight"], sd["head.conv.bias"], padding=1))
    return tuple(F.conv2d(hmap, sd[f"head.{n}.weight"], sd[f"head.{n}.bias"]) for n in ("heatmap", "size", "offset"))


class NetworkTest(unittest.TestCase):
    def test_names_and_shapes_match_the_doc(self):
        for mixer in ("padre", "softmax"):
            for cfg in (pd.make_config(mixer=mixer), pd.make_config(mixer=mixer, **SMALL)):
                sd = pd.PadreDetector(cfg).state_dict()
                self.assertEqual({k: list(v.shape) for k, v in sd.items()}, documented_names(cfg))

    def test_output_shapes(self):
        for mixer in ("padre", "softmax"):
            cfg = pd.make_config(mixer=mixer)
            with torch.no_grad():
                heat, size, off = pd.PadreDetector(cfg)(torch.randn(2, 3, 128, 128))
            self.assertEqual(tuple(heat.shape), (2, 4, 16, 16))
            self.assertEqual(tuple(size.shape), (2, 2, 16, 16))
            self.assertEqual(tuple(off.shape), (2, 2, 16, 16))

    def test_matches_the_doc_written_out(self):
        for mixer in ("padre", "softmax"):
            cfg = pd.make_config(mixer=mixer, **SMALL)
            model = randomised(cfg).double()
            x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
            with torch.no_grad():
                got = model(x)
                ref = doc_forward({k: v for k, v in model.state_dict().items()}, cfg, x)
            for a, b in zip(got, ref):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)

    def test_fused_padre_equals_reference(self):
        torch.manual_seed(1)
        mixer = pd.PadreMixer(24, (6, 5), 3, 5, 1e-6)
        with torch.no_grad():
            for p in mixer.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        x = torch.randn(3, 30, 24)
        torch.testing.assert_close(mixer(x), mixer.forward_reference(x), rtol=1e-5, atol=1e-5)

    def test_padre_gradcheck(self):
        torch.manual_seed(2)
        mixer = pd.PadreMixer(4, (3, 4), 3, 3, 1e-6).double()
        with torch.no_grad():
            for p in mixer.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        x = torch.randn(2, 12, 4, dtype=torch.float64, requires_grad=True)
        self.assertTrue(torch.autograd.gradcheck(mixer, (x,), eps=1e-6, atol=1e-5))
        self.assertTrue(torch.autograd.gradcheck(mixer.forward_reference, (x,), eps=1e-6, atol=1e-5))
        # Gradients with respect to the parameters too.
        names = ["proj.0.weight", "mix.1.weight", "mix_global.2", "norm.1.weight", "out.bias"]
        params = dict(mixer.named_parameters())
        inputs = tuple(params[n].detach().clone().requires_grad_(True) for n in names)

        def f(*ps):
            over = dict(params)
            over.update(dict(zip(names, ps)))
            return torch.func.functional_call(mixer, over, (x.detach(),))
        self.assertTrue(torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5))

    def test_gelu_is_erf_and_layernorm_eps(self):
        cfg = pd.make_config(norm_eps=1e-3, **SMALL)
        model = pd.PadreDetector(cfg)
        self.assertEqual(model.blocks[0].norm1.eps, 1e-3)
        self.assertEqual(model.norm.eps, 1e-3)
        self.assertEqual(model.blocks[0].mixer.norm[0].eps, 1e-3)
        t = torch.linspace(-4, 4, 101)
        mlp = model.blocks[0].mlp
        with torch.no_grad():
            h = mlp.fc1(t.view(-1, 1).expand(-1, 16))
            ref = mlp.fc2(0.5 * h * (1 + torch.erf(h / math.sqrt(2))))
            torch.testing.assert_close(mlp(t.view(-1, 1).expand(-1, 16)), ref)


class CostTest(unittest.TestCase):
    def counted_flops(self, module, n, d):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode
        x = torch.randn(1, n, d)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc, torch.no_grad():
            module(x)
        return fc.get_total_flops()

    def test_padre_flops_linear_in_tokens(self):
        d = 32
        f = {}
        for g in (8, 16, 32):
            n = g * g
            f[("padre", n)] = self.counted_flops(pd.PadreMixer(d, (g, g), 3, 7, 1e-6), n, d)
            f[("softmax", n)] = self.counted_flops(pd.SoftmaxMixer(d, 2), n, d)
            self.assertEqual(f[("padre", n)], pd.mixer_flops("padre", n, d, 3, 7))
            self.assertEqual(f[("softmax", n)], pd.mixer_flops("softmax", n, d, num_heads=2))
        for n in (64, 256):
            self.assertEqual(f[("padre", 4 * n)], 4 * f[("padre", n)])           # exactly linear
            self.assertGreater(f[("softmax", 4 * n)], 5 * f[("softmax", n)])     # quadratic term
        # The quadratic part is 2 * 2 * N^2 * D: the growth beyond linear is exactly that.
        self.assertEqual(f[("softmax", 1024)] - 4 * f[("softmax", 256)], 4 * 1024 ** 2 * d - 4 * 4 * 256 ** 2 * d)

    # Wall-clock growth is a benchmark's business (bench_vision, docs/vision.md), never a test's: the counted
    # FLOPs above are the deterministic form of "PADRe is linear in tokens".


class LetterboxTest(unittest.TestCase):
    def test_placement_padding_and_normalisation(self):
        cfg = pd.make_config(**dict(SMALL, image_size=64))
        mean = torch.tensor(cfg["pixel_mean"]).view(3, 1, 1)
        std = torch.tensor(cfg["pixel_std"]).view(3, 1, 1)
        img = np.full((100, 150, 3), 255, dtype=np.uint8)
        x, info = pd.letterbox(img, cfg)
        self.assertEqual(info, {"orig_w": 150, "orig_h": 100, "new_w": 64, "new_h": 43, "scale": 64 / 150})
        self.assertEqual(tuple(x.shape), (1, 3, 64, 64))
        torch.testing.assert_close(x[0, :, :43, :], ((1.0 - mean) / std).expand(3, 43, 64))
        torch.testing.assert_close(x[0, :, 43:, :], ((0.5 - mean) / std).expand(3, 21, 64))
        img = np.full((90, 50, 3), 0, dtype=np.uint8)
        x, info = pd.letterbox(img, cfg)
        self.assertEqual((info["new_w"], info["new_h"]), (36, 64))   # floor(50 * 64 / 90 + 0.5) = 36
        torch.testing.assert_close(x[0, :, :, :36], ((0.0 - mean) / std).expand(3, 64, 36))
        torch.testing.assert_close(x[0, :, :, 36:], ((0.5 - mean) / std).expand(3, 64, 28))

    def test_same_size_is_identity_and_resize_is_torch_bilinear(self):
        cfg = pd.make_config(pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1])
        rng = np.random.default_rng(0)
        img = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
        x, _ = pd.letterbox(img, cfg)
        torch.testing.assert_close(x[0], torch.from_numpy(img).permute(2, 0, 1).float() / 255.0, rtol=0, atol=0)
        img = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)
        x, info = pd.letterbox(img, cfg)
        ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0, size=(85, 128),
                            mode="bilinear", align_corners=False)
        torch.testing.assert_close(x[:, :, :85, :128], ref, rtol=0, atol=0)


def empty_head(g=16, c=4, fill=-10.0):
    heat = torch.full((c, g, g), fill)
    size = torch.full((2, g, g), 0.1)
    off = torch.full((2, g, g), 0.5)
    return heat, size, off


INFO128 = {"orig_w": 128, "orig_h": 128, "new_w": 128, "new_h": 128, "scale": 1.0}


class DecodeTest(unittest.TestCase):
    cfg = pd.make_config()

    def test_single_peak_box(self):
        heat, size, off = empty_head()
        heat[2, 3, 5] = 2.0
        heat[2, 3, 6] = 1.0                # a neighbour, not a peak
        size[:, 3, 5] = torch.tensor([0.25, 0.125])
        off[:, 3, 5] = torch.tensor([0.5, 0.25])
        dets = pd.decode(heat, size, off, self.cfg, INFO128, threshold=0.5)
        self.assertEqual(len(dets), 1)
        d = dets[0]
        self.assertEqual((d["class_id"], d["class_name"]), (2, "triangle"))
        self.assertAlmostEqual(d["score"], 1 / (1 + math.exp(-2.0)), places=6)
        # centre ((5 + 0.5) * 8, (3 + 0.25) * 8) = (44, 26), size (32, 16)
        np.testing.assert_allclose(d["box"], [28, 18, 60, 34], atol=1e-5)

    def test_threshold_is_inclusive_and_plateaus_are_peaks(self):
        heat, size, off = empty_head(fill=0.0)          # every cell ties at 0.5: all are peaks
        dets = pd.decode(heat, size * 0, off, self.cfg, INFO128, threshold=0.5)
        self.assertEqual(len(dets), 100)                # top 100 of 1024 equal scores...
        cells = [(d["class_id"], d.get("box")) for d in dets]
        self.assertEqual(cells[0][0], 0)                # ...in flat-index order: class 0 first
        self.assertEqual(pd.decode(heat, size, off, self.cfg, INFO128, threshold=0.5000001), [])

    def test_top_100_of_the_peaks(self):
        heat, size, off = empty_head()
        size.fill_(0.01)
        vals = torch.linspace(-3, 3, 4 * 64)
        k = 0
        for c in range(4):
            for gy in range(0, 16, 2):
                for gx in range(0, 16, 2):
                    heat[c, gy, gx] = vals[k]
                    k += 1
        dets = pd.decode(heat, size, off, self.cfg, INFO128, threshold=0.01)
        self.assertEqual(len(dets), 100)
        scores = [d["score"] for d in dets]
        self.assertEqual(scores, sorted(scores, reverse=True))
        self.assertAlmostEqual(scores[-1], float(torch.sigmoid(vals[-100])), places=6)

    def test_classwise_nms(self):
        heat, size, off = empty_head()
        size.fill_(0.5)                                  # 64 x 64 boxes
        heat[1, 8, 8] = 3.0
        heat[1, 8, 10] = 2.5                             # 16 px to the right: IoU 48/80 = 0.6 -> suppressed
        heat[0, 8, 10] = 2.0                             # other class, same box: kept
        heat[1, 12, 14] = 1.0                            # far away: kept
        dets = pd.decode(heat, size, off, self.cfg, INFO128, threshold=0.5)
        self.assertEqual([(d["class_id"], round(d["score"], 4)) for d in dets],
                         [(1, round(float(torch.sigmoid(torch.tensor(3.0))), 4)),
                          (0, round(float(torch.sigmoid(torch.tensor(2.0))), 4)),
                          (1, round(float(torch.sigmoid(torch.tensor(1.0))), 4))])
        size.fill_(0.3)                                  # 38.4 px: IoU 22.4/54.4 = 0.41 -> both kept
        dets = pd.decode(heat, size, off, self.cfg, INFO128, threshold=0.5)
        self.assertEqual(len(dets), 4)

    def test_undo_letterbox_and_clip(self):
        heat, size, off = empty_head()
        heat[0, 2, 2] = 3.0
        heat[3, 7, 15] = 3.0
        size[:, 2, 2] = torch.tensor([0.1, 0.1])        # 12.8 px around (20, 20)
        size[:, 7, 15] = torch.tensor([0.25, 0.25])     # 32 px around (124, 60): crosses the right edge
        info = {"orig_w": 256, "orig_h": 128, "new_w": 128, "new_h": 64, "scale": 0.5}
        dets = pd.decode(heat, size, off, self.cfg, info, threshold=0.5)
        by_class = {d["class_id"]: d["box"] for d in dets}
        np.testing.assert_allclose(by_class[0], [2 * 13.6, 2 * 13.6, 2 * 26.4, 2 * 26.4], rtol=1e-5)
        np.testing.assert_allclose(by_class[3], [2 * 108, 2 * 44, 256, 128], rtol=1e-5)   # x2, y2 clipped

    def test_negative_size_clamps_to_zero(self):
        heat, size, off = empty_head()
        heat[0, 4, 4] = 3.0
        size[:, 4, 4] = torch.tensor([-0.2, 0.1])
        (d,) = pd.decode(heat, size, off, self.cfg, INFO128, threshold=0.5)
        self.assertAlmostEqual(d["box"][0], d["box"][2], places=5)
        self.assertAlmostEqual(d["box"][3] - d["box"][1], 12.8, places=4)


class FilesTest(unittest.TestCase):
    def test_save_load_fp16_and_fp32(self):
        cfg = pd.make_config(mixer="padre", **SMALL)
        model = randomised(cfg, 3)
        x = torch.randn(1, 3, 64, 64)
        with tempfile.TemporaryDirectory() as tmp:
            for dtype, tag in ((torch.float16, "F16"), (torch.float32, "F32")):
                pd.save_detector(model, tmp, dtype=dtype)
                with open(os.path.join(tmp, "model.safetensors"), "rb") as f:
                    n = int.from_bytes(f.read(8), "little")
                    header = json.loads(f.read(n))
                self.assertEqual({v["dtype"] for k, v in header.items() if k != "__metadata__"}, {tag})
                with open(os.path.join(tmp, "config.json")) as f:
                    self.assertEqual(json.load(f), cfg)
                loaded = pd.load_detector(tmp)
                for k, v in model.state_dict().items():
                    torch.testing.assert_close(loaded.state_dict()[k], v.to(dtype).float(), rtol=0, atol=0)
                with torch.no_grad():
                    got = loaded(x)
                    ref = model(x)
                for a, b in zip(got, ref):
                    torch.testing.assert_close(a, b, rtol=0, atol=0 if dtype == torch.float32 else 0.05)

    def test_own_safetensors_matches_library(self):
        tensors = {"a": torch.randn(3, 4).half(), "b.c": torch.arange(5, dtype=torch.float32), "z": torch.zeros(0)}
        with tempfile.TemporaryDirectory() as tmp:
            own = os.path.join(tmp, "own.safetensors")
            pd.write_safetensors_own(tensors, own, {"format": "pt"})
            back = pd.read_safetensors_own(own)
            for k, v in tensors.items():
                torch.testing.assert_close(back[k], v, rtol=0, atol=0)
            try:
                from safetensors.torch import load_file, save_file
            except ImportError:
                self.skipTest("safetensors library not installed")
            for k, v in load_file(own).items():
                torch.testing.assert_close(v, tensors[k], rtol=0, atol=0)
            lib = os.path.join(tmp, "lib.safetensors")
            save_file(tensors, lib)
            for k, v in pd.read_safetensors_own(lib).items():
                torch.testing.assert_close(v, tensors[k], rtol=0, atol=0)


class GoldenTest(unittest.TestCase):
    def test_golden_deterministic_and_consistent(self):
        import make_padre_golden
        with tempfile.TemporaryDirectory() as tmp:
            a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
            make_padre_golden.main([a])
            make_padre_golden.main([b])
            for dirpath, _, files in os.walk(a):
                for fn in files:
                    pa = os.path.join(dirpath, fn)
                    self.assertTrue(filecmp.cmp(pa, os.path.join(b, os.path.relpath(pa, a)), shallow=False), pa)
            with open(os.path.join(a, "manifest.json")) as f:
                manifest = json.load(f)
            self.assertEqual(set(manifest["models"]), {"padre", "softmax", "padre_fp16"})
            for name, spec in manifest["models"].items():
                model = pd.load_detector(os.path.join(a, name))
                self.assertEqual(model.config["mixer"], spec["mixer"])
                for im in manifest["images"]:
                    img = np.load(os.path.join(a, im["npy"]))
                    self.assertEqual(img.shape, (im["height"], im["width"], 3))
                    d = os.path.join(a, name, im["name"])
                    x, info = pd.letterbox(img, model.config)
                    np.testing.assert_array_equal(np.load(os.path.join(d, "input.npy")), x.numpy())
                    with open(os.path.join(d, "detections.json")) as f:
                        dets = json.load(f)
                    self.assertEqual(dets["letterbox"], info)
                    self.assertGreater(dets["stats"]["peaks"], 100)
                    self.assertGreater(dets["stats"]["suppressed_by_nms_at_threshold_0"], 0)
                    self.assertEqual(dets["threshold_0.5"], [t for t in dets["threshold_0"] if t["score"] >= 0.5])
                    heat = np.load(os.path.join(d, "heatmap_logits.npy"))
                    self.assertEqual(heat.shape, (1, 4, 16, 16))
                    self.assertEqual(np.load(os.path.join(d, "block_1.npy")).shape, (1, 256, 32))


if __name__ == "__main__":
    unittest.main()

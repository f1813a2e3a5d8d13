"""Procedural street scenes in the CamVid layout: the embedded default dataset.

A pinhole camera looks down a street: every pixel below the horizon is a point on the ground
plane (road with lane marks, kerb, sidewalk, verge), facades and fences are vertical planes
parallel to the road, and cars, pedestrians, cyclists, poles, signs, traffic lights and trees
are upright figures standing on the ground at a depth z. Everything is drawn with numpy masks
(polygons, ellipses, planes) through a z-buffer, so occlusion and perspective scale are right
by construction. Then lighting (gain, tint, shadows, vignette), blur and sensor noise.

Each image is seeded from (seed, split, index) alone, so generation is deterministic and can be
split over processes: the same seed gives byte-identical PNGs.

Labels use the 11 CamVid classes, 11 = unlabelled (a dirt verge), like the real data.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gasnas.data.classes import CAMVID_CLASSES
from gasnas.errors import GasnasError

GENERATOR = "gasnas.synthetic"
VERSION = 1
MARKER = "synth.json"

SKY, BUILDING, POLE, ROAD, SIDEWALK, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST, VOID = range(12)

f32 = np.float32


# --------------------------------------------------------------------------- canvas


class Canvas:
    """Image (float RGB), label and z-buffer; `paint` writes where the primitive is nearest."""

    def __init__(self, h: int, w: int, rng: np.random.Generator):
        self.h, self.w = h, w
        self.img = np.zeros((h, w, 3), f32)
        self.lbl = np.full((h, w), SKY, np.uint8)
        self.z = np.full((h, w), np.inf, f32)
        # fine texture shared by all surfaces: uniform, zero mean, unit variance
        self.noise = (rng.integers(0, 256, (h, w), dtype=np.uint8).astype(f32) - f32(127.5)) * f32(1 / 73.9)

    def box(self, u0: float, u1: float, v0: float, v1: float):
        """Clipped pixel box → (rows, cols, v centres [n,1], u centres [1,m]) or None."""
        r0, r1 = max(0, math.floor(v0)), min(self.h, math.ceil(v1))
        c0, c1 = max(0, math.floor(u0)), min(self.w, math.ceil(u1))
        if r0 >= r1 or c0 >= c1:
            return None
        vv = np.arange(r0, r1, dtype=f32)[:, None] + f32(0.5)
        uu = np.arange(c0, c1, dtype=f32)[None, :] + f32(0.5)
        return slice(r0, r1), slice(c0, c1), vv, uu

    def paint(self, box, mask: np.ndarray, color, cls: int, depth, tex: float = 0.0) -> None:
        """Write colour/class/depth where `mask` holds and nothing nearer was drawn."""
        rs, cs = box[0], box[1]
        zb = self.z[rs, cs]
        k = np.flatnonzero(mask & (zb >= depth))  # flat index in the box
        if not len(k):
            return
        r, c = np.divmod(k, zb.shape[1])
        fi = (r + rs.start) * self.w + (c + cs.start)  # flat index in the image
        col = np.asarray(color, f32)
        if col.ndim == 3:
            col = np.broadcast_to(col, zb.shape + (3,))[r, c]
        if tex:
            col = col + f32(tex) * self.noise.ravel()[fi][:, None]
        self.img.reshape(-1, 3)[fi] = col
        self.lbl.reshape(-1)[fi] = cls
        self.z.reshape(-1)[fi] = depth if np.ndim(depth) == 0 else np.broadcast_to(depth, zb.shape)[r, c]


def poly_mask(vv: np.ndarray, uu: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Inside of a convex polygon given as (u, v) points (either winding)."""
    n = len(pts)
    area = sum(pts[i][0] * pts[(i + 1) % n][1] - pts[(i + 1) % n][0] * pts[i][1] for i in range(n))
    sgn = 1.0 if area >= 0 else -1.0
    m = np.ones(np.broadcast_shapes(vv.shape, uu.shape), bool)
    for i in range(n):
        (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % n]
        m &= sgn * ((x1 - x0) * (vv - y0) - (y1 - y0) * (uu - x0)) >= 0
    return m


def _bounds(pts: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    us, vs = [p[0] for p in pts], [p[1] for p in pts]
    return min(us), max(us), min(vs), max(vs)


def polygon(cv: Canvas, pts, color, cls: int, depth: float, tex: float = 0.0) -> None:
    b = cv.box(*_bounds(pts))
    if b is not None:
        cv.paint(b, poly_mask(b[2], b[3], pts), color, cls, depth, tex)


def segment(cv: Canvas, p0, p1, width: float, color, cls: int, depth: float, tex: float = 0.0) -> None:
    """A thick line (quad) from p0 to p1 in pixels; at least ~1 px wide."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    n = math.hypot(dx, dy) or 1.0
    hw = max(width, 0.9) / 2
    ox, oy = -dy / n * hw, dx / n * hw
    polygon(cv, [(x0 + ox, y0 + oy), (x1 + ox, y1 + oy), (x1 - ox, y1 - oy), (x0 - ox, y0 - oy)], color, cls, depth, tex)


def ellipses(cv: Canvas, items: list[tuple[float, float, float, float]], color, cls: int, depth: float,
             tex: float = 0.0, shade: float = 0.0) -> None:
    """Union of ellipses (cu, cv, ru, rv); `shade` darkens towards the bottom."""
    u0 = min(c - r for c, _, r, _ in items)
    u1 = max(c + r for c, _, r, _ in items)
    v0 = min(c - r for _, c, _, r in items)
    v1 = max(c + r for _, c, _, r in items)
    b = cv.box(u0, u1, v0, v1)
    if b is None:
        return
    vv, uu = b[2], b[3]
    r0, c0 = b[0].start, b[1].start
    m = np.zeros(np.broadcast_shapes(vv.shape, uu.shape), bool)
    for cu, cvv, ru, rv in items:  # each ellipse only over its own box
        e = cv.box(cu - ru, cu + ru, cvv - rv, cvv + rv)
        if e is not None:
            sub = m[e[0].start - r0 : e[0].stop - r0, e[1].start - c0 : e[1].stop - c0]
            sub |= ((e[3] - cu) / max(ru, 0.5)) ** 2 + ((e[2] - cvv) / max(rv, 0.5)) ** 2 <= 1.0
    col: Any = color
    if shade:
        t = (vv - v0) / max(v1 - v0, 1.0)
        col = np.asarray(color, f32)[None, None, :] * (1.0 + shade * (0.5 - t))[:, :, None]
    cv.paint(b, m, col, cls, depth, tex)


def rect(cv: Canvas, u0: float, u1: float, v0: float, v1: float, color, cls: int, depth: float,
         tex: float = 0.0, min_w: float = 0.0) -> None:
    if u1 - u0 < min_w:
        c = (u0 + u1) / 2
        u0, u1 = c - min_w / 2, c + min_w / 2
    b = cv.box(u0, u1, v0, v1)
    if b is not None:
        cv.paint(b, np.ones((b[2].shape[0], b[3].shape[1]), bool), color, cls, depth, tex)


# --------------------------------------------------------------------------- camera and scene


@dataclass
class Cam:
    f: float
    xv: float  # vanishing point column
    yh: float  # horizon row
    hc: float  # camera height (m)

    def u(self, x: float, z: float) -> float:
        return self.xv + self.f * x / z

    def v(self, y: float, z: float) -> float:
        return self.yh + self.f * (self.hc - y) / z

    def p(self, x: float, y: float, z: float) -> tuple[float, float]:
        return self.u(x, z), self.v(y, z)


def _col(rng: np.random.Generator, base, jitter: float = 12.0) -> np.ndarray:
    return np.clip(np.asarray(base, f32) + rng.uniform(-jitter, jitter, 3).astype(f32), 0, 255)


def _pick(rng: np.random.Generator, options: list) -> Any:
    return options[int(rng.integers(len(options)))]


CAR_COLORS = [(190, 30, 30), (30, 55, 150), (225, 225, 225), (150, 150, 155), (25, 25, 30),
              (60, 75, 60), (185, 150, 60), (110, 20, 35), (90, 110, 140), (200, 200, 190), (120, 120, 125)]
CLOTHES = [(30, 30, 35), (200, 200, 200), (40, 60, 130), (150, 30, 30), (60, 90, 50), (120, 100, 80),
           (200, 170, 60), (90, 90, 95), (160, 80, 140), (40, 110, 150), (210, 120, 60)]
SKIN = [(235, 200, 170), (200, 150, 115), (150, 100, 70), (95, 65, 45)]
FACADES = [(150, 70, 55), (190, 175, 150), (130, 130, 130), (210, 205, 195), (90, 80, 75),
           (170, 120, 90), (110, 115, 125), (200, 185, 120)]
GREENS = [(60, 100, 40), (80, 120, 50), (40, 75, 35), (100, 125, 60), (130, 110, 50)]


class Scene:
    def __init__(self, h: int, w: int, rng: np.random.Generator):
        from PIL import Image

        self.rng = rng
        self.cv = Canvas(h, w, rng)
        lf = rng.standard_normal((5, 7)).astype(f32)
        self.lf = np.asarray(Image.fromarray(lf).resize((w, h), Image.Resampling.BILINEAR)) / f32(1.5)
        self.cam = Cam(
            f=w * rng.uniform(0.75, 1.05),
            xv=w * rng.uniform(0.4, 0.6),
            yh=h * rng.uniform(0.4, 0.56),
            hc=rng.uniform(1.3, 1.8),
        )
        self.road = (rng.uniform(2.5, 6.0), rng.uniform(2.5, 6.0))  # half widths left, right
        self.walk = (rng.uniform(2.0, 5.0), rng.uniform(2.0, 5.0))
        self.verge = tuple(rng.uniform(0.5, 3.5) if rng.random() < 0.45 else 0.0 for _ in range(2))
        self.build = tuple(rng.random() < 0.85 for _ in range(2))

    def edge(self, side: int, what: str) -> float:
        """Lateral position (signed, m) of the road edge / sidewalk edge / facade on a side (0 L, 1 R)."""
        s = -1.0 if side == 0 else 1.0
        d = self.road[side]
        if what in ("walk", "facade"):
            d += self.walk[side]
        if what == "facade":
            d += self.verge[side]
        return s * d

    # ----------------------------------------------------------------------- background

    def sky(self) -> None:
        cv, rng = self.cv, self.rng
        kind = rng.choice(4, p=[0.4, 0.3, 0.2, 0.1])
        top, bottom = [
            ((70, 120, 200), (175, 200, 230)),
            ((165, 170, 180), (215, 215, 220)),
            ((150, 175, 200), (225, 225, 215)),
            ((80, 80, 130), (235, 165, 120)),
        ][kind]
        top, bottom = _col(rng, top, 15), _col(rng, bottom, 15)
        n = min(cv.h, math.ceil(self.cam.yh) + 1)  # rows below are all ground
        t = np.clip(np.arange(n, dtype=f32) / max(self.cam.yh, 1.0), 0, 1)[:, None, None]
        clouds = (f32(rng.uniform(10, 35)) * np.maximum(self.lf[:n], 0))[:, :, None]
        cv.img[:n] = top * (1 - t) + bottom * t + clouds

    def ground(self) -> None:
        cv, rng, cam = self.cv, self.rng, self.cam
        b = cv.box(0, cv.w, cam.yh, cv.h)
        if b is None:
            return
        rs, cs, vv, uu = b
        d = np.maximum(vv - f32(cam.yh), f32(1e-3))
        z = f32(cam.f * cam.hc) / d  # per row [n,1]
        x = (uu - f32(cam.xv)) * (f32(cam.hc) / d)
        rl, rr = self.road
        wl, wr = self.edge(0, "walk"), self.edge(1, "walk")
        # region ids: 0 road, 1 lane mark, 2 sidewalk, 3 kerb, 4 left verge, 5 right verge
        rid = np.zeros(x.shape, np.uint8)
        left, right = x < -rl, x > rr
        rid[left | right] = 2
        rid[(left & (x >= -rl - 0.18)) | (right & (x <= rr + 0.18))] = 3
        rid[x < wl] = 4
        rid[x > wr] = 5
        marks = np.zeros(x.shape, bool)
        mid = (rr - rl) / 2 + rng.uniform(-0.5, 0.5)
        phase, period = rng.uniform(0, 9), rng.uniform(7, 12)
        if rng.random() < 0.8:
            dash = ((z + phase) % period) < period * rng.uniform(0.3, 0.5)
            if rng.random() < 0.2:  # double solid line
                dash = np.ones_like(dash)
                marks |= np.abs(x - (mid + 0.2)) < 0.06
            marks |= (np.abs(x - mid) < 0.07) & dash
        if rng.random() < 0.6:
            marks |= (np.abs(x - (0.3 - rl)) < 0.06) | (np.abs(x - (rr - 0.3)) < 0.06)
        if rng.random() < 0.25:  # zebra crossing
            zc = rng.uniform(6, 25)
            rows = np.nonzero(((z > zc) & (z < zc + 3.0))[:, 0])[0]
            marks[rows] |= (x[rows] % 1.0) < 0.5
        rid[(rid == 0) & marks] = 1
        road = _col(rng, [rng.uniform(60, 115)] * 3, 6)
        mark = _col(rng, (225, 225, 215) if rng.random() < 0.8 else (215, 180, 60), 10) * rng.uniform(0.75, 1.0)
        walk = _col(rng, _pick(rng, [(160, 160, 160), (175, 165, 140), (150, 110, 100), (120, 120, 125)]), 12)
        kerb = np.clip(walk + 25, 0, 255)
        verge = []
        self.verge_cls = []
        for _side in range(2):
            kind = rng.integers(3)
            verge.append(_col(rng, [_pick(rng, GREENS), (115, 95, 75), walk][kind], 10))
            self.verge_cls.append([TREE, VOID, SIDEWALK][kind])
        colors = np.stack([road, mark, walk, kerb, verge[0], verge[1]]).astype(f32)
        classes = np.array([ROAD, ROAD, SIDEWALK, SIDEWALK, *self.verge_cls], np.uint8)
        tex = np.array([7, 6, 6, 5, 14, 14], f32)
        shade = tex[rid] * cv.noise[rs, cs] + f32(12) * self.lf[rs, cs]
        img = colors[rid]
        img += shade[:, :, None]
        tile = rng.uniform(0.4, 0.8)
        r, c = np.nonzero(rid == 2)
        g = ((x[r, c] % tile) < 0.04) | ((z[r, 0] % tile) < 0.05)
        img[r[g], c[g]] *= f32(0.8)
        if rng.random() < 0.5:  # a building's shadow across part of the street
            side = -1 if rng.random() < 0.5 else 1
            edge = rng.uniform(-rl, rr)
            img *= np.where((x - edge) * side > 0, f32(rng.uniform(0.5, 0.75)), f32(1))[:, :, None]
        cv.img[rs, cs] = img
        cv.lbl[rs, cs] = classes[rid]
        cv.z[rs, cs] = z

    def _plane(self, xp: float, z0: float, z1: float):
        """Columns showing the plane x = xp between depths z0..z1 → (box, depth [1,m], height Y [n,m], ok [1,m])."""
        cam, cv = self.cam, self.cv
        ua, ub = cam.u(xp, z0), cam.u(xp, z1)
        b = cv.box(min(ua, ub), max(ua, ub), 0, cv.h)
        if b is None:
            return None
        rs, cs, vv, uu = b
        du = uu - f32(cam.xv)
        du = np.where(np.abs(du) < 1e-3, f32(1e-3) * np.sign(xp), du)
        zc = f32(cam.f * xp) / du
        ok = (zc > 0) & (zc >= z0) & (zc <= z1)
        zc = np.where(ok, zc, f32(1e9))
        y = f32(cam.hc) - (vv - f32(cam.yh)) * (zc / f32(cam.f))
        return b, zc, y, ok

    def facades(self, side: int) -> None:
        cv, rng, cam = self.cv, self.rng, self.cam
        xp = self.edge(side, "facade")
        n = 40
        starts = (np.cumsum(rng.uniform(6, 28, n)) - rng.uniform(6, 28)).astype(f32)
        starts[0] = -1.0
        heights = rng.uniform(5, 28, n).astype(f32)
        kind = rng.choice(3, n, p=[0.8, 0.1, 0.1])  # 0 building, 1 gap (sky), 2 gap with trees
        fac = np.array(FACADES, f32)[rng.integers(len(FACADES), size=n)]
        base = np.clip(fac + rng.uniform(-18, 18, (n, 3)).astype(f32), 0, 255)
        gl = np.array([(40, 50, 65), (70, 85, 105), (25, 25, 30), (120, 140, 160)], f32)
        glass = np.clip(gl[rng.integers(4, size=n)] + rng.uniform(-12, 12, (n, 3)).astype(f32), 0, 255)
        floor_h = rng.uniform(2.8, 3.8, n).astype(f32)
        spacing = rng.uniform(1.8, 4.0, n).astype(f32)
        win_w = spacing * rng.uniform(0.35, 0.65, n).astype(f32)
        win_h = floor_h * rng.uniform(0.35, 0.6, n).astype(f32)
        in_shade = rng.random() < 0.5
        dim = f32(rng.uniform(0.6, 0.85)) if in_shade else f32(1.0)
        green = _col(rng, _pick(rng, GREENS), 10)
        p = self._plane(xp, 0.3, 400.0)
        if p is None:
            return
        b, zc, y, ok = p
        rs, cs = b[0], b[1]
        zc1 = zc[0]
        seg = np.clip(np.searchsorted(starts, zc1, side="right") - 1, 0, n - 1)
        h_col, k_col = heights[seg], kind[seg]
        tree_h = np.where(k_col == 2, f32(3.5) + h_col * f32(0.25) + f32(1.2) * np.sin(zc1 * f32(0.9)), h_col)
        vis = ok & (y >= 0) & (y <= tree_h) & (k_col != 1) & (cv.z[rs, cs] >= zc)
        k = np.flatnonzero(vis)  # flat index in the box
        if not len(k):
            return
        m = vis.shape[1]
        c = k % m
        fi = (k // m + rs.start) * cv.w + (c + cs.start)  # flat index in the image
        fz = (zc1 - starts[seg]) % spacing[seg]  # per column: position along the facade
        win_col = (fz > 0.4) & (fz < 0.4 + win_w[seg]) & (spacing[seg] * cam.f > 3.0 * zc1)
        sc, yy, hc = seg[c], y.ravel()[k], h_col[c]
        is_tree = k_col[c] == 2
        fy = yy % floor_h[sc]
        win = win_col[c] & (fy > 0.9) & (fy < 0.9 + win_h[sc]) & (yy > 3.2) & (yy < hc - 0.8)
        col = base[sc]
        col[win] = glass[sc[win]] + 30 * self.lf.ravel()[fi[win], None]
        shade = np.where(yy > hc - 0.5, f32(0.7) * dim, dim)  # cornice
        shade[(fy < 0.15) & (yy > 3.0)] *= f32(0.85)  # floor ledges
        col *= shade[:, None]
        col[is_tree] = green
        col += (np.where(is_tree, f32(22), f32(5)) * cv.noise.ravel()[fi])[:, None]
        cv.img.reshape(-1, 3)[fi] = col
        cv.lbl.reshape(-1)[fi] = np.where(is_tree, TREE, BUILDING).astype(np.uint8)
        cv.z.reshape(-1)[fi] = zc1[c]

    def end_wall(self) -> None:
        cv, rng, cam = self.cv, self.rng, self.cam
        zw = rng.uniform(35, 160)
        n = 30
        edges = (np.cumsum(rng.uniform(6, 25, n)) - rng.uniform(60, 120)).astype(f32)
        heights = rng.uniform(6, 35, n).astype(f32)
        fac = np.array(FACADES, f32)[rng.integers(len(FACADES), size=n)]
        base = np.clip(fac + rng.uniform(-18, 18, (n, 3)).astype(f32), 0, 255) * f32(rng.uniform(0.8, 1.05))
        b = cv.box(0, cv.w, cam.v(float(heights.max()), zw), cam.v(0, zw))
        if b is None:
            return
        _, _, vv, uu = b
        x = (uu - f32(cam.xv)) * f32(zw / cam.f)
        y = f32(cam.hc) - (vv - f32(cam.yh)) * f32(zw / cam.f)
        seg = np.clip(np.searchsorted(edges, x[0]), 0, n - 1)
        m = (y >= 0) & (y <= heights[seg])
        cv.paint(b, m, np.broadcast_to(base[seg][None], m.shape + (3,)), BUILDING, f32(zw), tex=5)

    def fence(self, side: int, z0: float, z1: float) -> None:
        cv, rng = self.cv, self.rng
        xp = self.edge(side, "walk") + (0.1 if side == 0 else -0.1)
        p = self._plane(xp, z0, z1)
        if p is None:
            return
        b, zc, y, ok = p
        hf = rng.uniform(1.0, 2.0)
        zr = zc[0] - z0
        kind = rng.choice(3, p=[0.2, 0.35, 0.45])
        if kind == 0:  # posts and rails
            post = rng.uniform(1.8, 2.6)
            pat = ((zr % post) < 0.12) | (np.abs(y - hf * 0.45) < 0.08) | (np.abs(y - hf * 0.9) < 0.08)
        elif kind == 1:  # palisade
            bar = rng.uniform(0.12, 0.25)
            pat = ((zr % bar) < bar * 0.45) | (np.abs(y - hf * 0.85) < 0.05)
        else:  # solid panels
            pat = np.ones_like(y, bool)
        color = _col(rng, _pick(rng, [(120, 90, 60), (110, 110, 115), (50, 80, 55), (200, 200, 195), (40, 40, 45)]), 12)
        cv.paint(b, ok & (y >= 0) & (y <= hf) & pat, color, FENCE, zc, tex=8)

    # ----------------------------------------------------------------------- figures

    def car(self, x: float, z: float) -> None:
        cv, rng, cam = self.cv, self.rng, self.cam
        w, length = rng.uniform(1.6, 2.0), rng.uniform(3.8, 4.8)
        hb, hr = rng.uniform(0.9, 1.15), rng.uniform(1.35, 1.65)
        body = _col(rng, _pick(rng, CAR_COLORS), 15)
        glass = _col(rng, (45, 55, 70), 15)
        dark = _col(rng, (25, 25, 28), 5)
        s = cam.f / z
        # shadow on the ground under the car (image only)
        b = cv.box(cam.u(x - w * 0.65, z), cam.u(x + w * 0.65, z), cam.v(0, z) - 0.25 * s, cam.v(0, z) + 0.12 * s)
        if b is not None:
            rs, cs, vv, uu = b
            m = (((uu - cam.u(x, z)) / (w * 0.65 * s)) ** 2 + ((vv - cam.v(0, z)) / (0.15 * s)) ** 2 <= 1) & (cv.z[rs, cs] < np.inf)
            cv.img[rs, cs][m] *= f32(0.5)
        xs = x - w / 2 if x - w / 2 > 0 else x + w / 2 if x + w / 2 < 0 else None
        if xs is not None:  # the side facing the camera's axis
            z1 = z + length
            dz = z + length / 2
            polygon(cv, [cam.p(xs, 0.25, z), cam.p(xs, hb, z), cam.p(xs, hb, z1), cam.p(xs, 0.25, z1)], body * 0.85, CAR, dz, tex=4)
            polygon(cv, [cam.p(xs, hb, z + 0.9), cam.p(xs, hr, z + 1.4), cam.p(xs, hr, z1 - 1.3), cam.p(xs, hb, z1 - 0.7)], body * 0.9, CAR, dz)
            polygon(cv, [cam.p(xs, hb + 0.05, z + 1.0), cam.p(xs, hr - 0.07, z + 1.45), cam.p(xs, hr - 0.07, z1 - 1.4), cam.p(xs, hb + 0.05, z1 - 0.8)], glass, CAR, dz - 0.01, tex=6)
            for zw in (z + 0.8, z1 - 0.8):
                r = 0.34 * cam.f / zw
                cu, cvv = cam.p(xs, 0.34, zw)
                ellipses(cv, [(cu, cvv, r * 0.45, r)], dark, CAR, dz - 0.02)
        u0, u1 = cam.u(x - w / 2, z), cam.u(x + w / 2, z)
        # wheels under the bumper, body, cabin, rear window, lights, plate
        for xw in (x - w / 2 + 0.15, x + w / 2 - 0.4):
            rect(cv, cam.u(xw, z), cam.u(xw + 0.25, z), cam.v(0.35, z), cam.v(0, z), dark, CAR, z + 0.3)
        rect(cv, u0, u1, cam.v(hb, z), cam.v(0.25, z), body, CAR, z, tex=4)
        zc = z + 0.6
        polygon(cv, [cam.p(x - w / 2 + 0.08, hb, zc), cam.p(x - w / 2 + 0.25, hr, zc), cam.p(x + w / 2 - 0.25, hr, zc), cam.p(x + w / 2 - 0.08, hb, zc)], body, CAR, zc)
        polygon(cv, [cam.p(x - w / 2 + 0.18, hb + 0.05, zc), cam.p(x - w / 2 + 0.3, hr - 0.08, zc), cam.p(x + w / 2 - 0.3, hr - 0.08, zc), cam.p(x + w / 2 - 0.18, hb + 0.05, zc)], glass, CAR, zc - 0.01, tex=6)
        lamp = _col(rng, (200, 30, 30) if rng.random() < 0.7 else (235, 225, 190), 15)
        for xl in (x - w / 2 + 0.05, x + w / 2 - 0.3):
            rect(cv, cam.u(xl, z), cam.u(xl + 0.25, z), cam.v(hb - 0.12, z), cam.v(hb - 0.3, z), lamp, CAR, z - 0.01)
        rect(cv, cam.u(x - 0.25, z), cam.u(x + 0.25, z), cam.v(0.55, z), cam.v(0.43, z), _col(rng, (225, 215, 120) if rng.random() < 0.5 else (230, 230, 230), 8), CAR, z - 0.01)
        rect(cv, u0, u1, cam.v(0.3, z), cam.v(0.2, z), dark, CAR, z - 0.01)

    def person(self, x: float, z: float, height: float, cls: int = PEDESTRIAN, feet: bool = True,
               top: np.ndarray | None = None) -> None:
        cv, rng, cam = self.cv, self.rng, self.cam
        h = height
        skin = _col(rng, _pick(rng, SKIN), 8)
        top = _col(rng, _pick(rng, CLOTHES), 20) if top is None else top
        legs = _col(rng, _pick(rng, CLOTHES), 20)

        def P(dx: float, y: float) -> tuple[float, float]:
            return cam.p(x + dx, y, z)

        s = cam.f / z
        if feet:
            stride = rng.uniform(-0.18, 0.18) * h
            for side, st in ((-1, stride), (1, -stride)):
                segment(cv, P(side * 0.06 * h, 0.5 * h), P(side * 0.06 * h + st, 0.02 * h), 0.075 * h * s, legs, cls, z, tex=4)
        polygon(cv, [P(-0.12 * h, 0.48 * h), P(-0.14 * h, 0.81 * h), P(0.14 * h, 0.81 * h), P(0.12 * h, 0.48 * h)], top, cls, z - 0.01, tex=5)
        for side in (-1, 1):
            swing = rng.uniform(-0.08, 0.08) * h
            segment(cv, P(side * 0.15 * h, 0.79 * h), P(side * 0.18 * h + swing, 0.48 * h), 0.045 * h * s, top, cls, z - 0.02)
            cu, cvv = P(side * 0.18 * h + swing, 0.47 * h)
            ellipses(cv, [(cu, cvv, 0.025 * h * s, 0.03 * h * s)], skin, cls, z - 0.02)
        cu, cvv = P(0, 0.9 * h)
        ellipses(cv, [(cu, cvv, 0.055 * h * s, 0.07 * h * s)], skin, cls, z - 0.03)
        hair = _col(rng, _pick(rng, [(30, 25, 20), (90, 60, 30), (180, 150, 90), (120, 120, 120)]), 10)
        ellipses(cv, [(cu, cvv - 0.035 * h * s, 0.058 * h * s, 0.04 * h * s)], hair, cls, z - 0.035)
        if rng.random() < 0.3:  # a bag
            bx = rng.choice([-1, 1]) * 0.17 * h
            polygon(cv, [P(bx - 0.06 * h, 0.42 * h), P(bx - 0.06 * h, 0.58 * h), P(bx + 0.06 * h, 0.58 * h), P(bx + 0.06 * h, 0.42 * h)],
                    _col(rng, _pick(rng, CLOTHES), 20), cls, z - 0.04)

    def cyclist(self, x: float, z: float) -> None:
        cv, rng, cam = self.cv, self.rng, self.cam
        s = cam.f / z
        dark = _col(rng, (30, 30, 32), 6)
        frame = _col(rng, _pick(rng, CLOTHES + [(200, 30, 30), (220, 220, 220)]), 15)
        hi_vis = [(205, 225, 45), (240, 125, 30)]  # many cyclists wear a bright jacket
        top = _col(rng, _pick(rng, hi_vis if rng.random() < 0.6 else CLOTHES), 20)

        def P(dx: float, y: float) -> tuple[float, float]:
            return cam.p(x + dx, y, z)

        if rng.random() < 0.3:  # seen from behind
            cu, cvv = P(0, 0.34)
            ellipses(cv, [(cu, cvv, max(0.05 * s, 0.8), 0.34 * s)], dark, BICYCLIST, z + 0.05)
            segment(cv, P(-0.3, 1.05), P(0.3, 1.05), 0.04 * s, dark, BICYCLIST, z + 0.04)
            self.person(x, z, rng.uniform(1.55, 1.8), cls=BICYCLIST, feet=False, top=top)
            legs = _col(rng, _pick(rng, CLOTHES), 20)
            for side in (-1, 1):
                segment(cv, P(side * 0.1, 0.85), P(side * 0.13, rng.uniform(0.2, 0.55)), 0.11 * s, legs, BICYCLIST, z - 0.005)
            return
        d = 1.0 if rng.random() < 0.5 else -1.0  # riding left or right, seen from the side
        for hub in (-0.52, 0.52):
            cu, cvv = P(hub, 0.34)
            r = 0.34 * s
            b = cv.box(cu - r, cu + r, cvv - r, cvv + r)
            if b is not None:
                q = ((b[3] - cu) ** 2 + (b[2] - cvv) ** 2) / max(r, 0.5) ** 2
                cv.paint(b, (q <= 1.0) & (q >= 0.5), dark, BICYCLIST, z + 0.05)
        pts = {"rh": (-0.52 * d, 0.34), "fh": (0.52 * d, 0.34), "bb": (0.0, 0.3), "seat": (-0.18 * d, 0.95), "head": (0.42 * d, 0.95)}
        for a, bb in (("rh", "bb"), ("rh", "seat"), ("seat", "bb"), ("bb", "head"), ("seat", "head"), ("head", "fh")):
            segment(cv, P(*pts[a]), P(*pts[bb]), 0.045 * s, frame, BICYCLIST, z + 0.03)
        legs = _col(rng, _pick(rng, CLOTHES), 20)
        skin = _col(rng, _pick(rng, SKIN), 8)
        segment(cv, P(-0.15 * d, 1.0), P(0.05 * d, 0.35), 0.12 * s, legs, BICYCLIST, z)
        segment(cv, P(-0.15 * d, 1.0), P(0.15 * d, 1.45), 0.3 * s, top, BICYCLIST, z - 0.01)
        segment(cv, P(0.12 * d, 1.4), P(0.42 * d, 1.0), 0.08 * s, top, BICYCLIST, z - 0.02)
        cu, cvv = P(0.25 * d, 1.62)
        ellipses(cv, [(cu, cvv, 0.1 * s, 0.12 * s)], skin, BICYCLIST, z - 0.03)
        ellipses(cv, [(cu, cvv - 0.05 * s, 0.12 * s, 0.07 * s)], _col(rng, _pick(rng, CLOTHES), 20), BICYCLIST, z - 0.035)

    def pole(self, x: float, z: float) -> None:
        cv, rng, cam = self.cv, self.rng, self.cam
        h, w = rng.uniform(4.0, 9.0), rng.uniform(0.1, 0.25)
        color = _col(rng, _pick(rng, [(120, 120, 125), (60, 70, 60), (35, 35, 38), (170, 170, 165)]), 10)
        rect(cv, cam.u(x - w / 2, z), cam.u(x + w / 2, z), cam.v(h, z), cam.v(0, z), color, POLE, z, tex=4, min_w=1.0)
        if rng.random() < 0.4:  # street light arm towards the road
            d = 1.0 if x < 0 else -1.0
            arm = rng.uniform(1.0, 2.2)
            segment(cv, cam.p(x, h - 0.3, z), cam.p(x + d * arm, h, z), 0.08 * cam.f / z, color, POLE, z)
            cu, cvv = cam.p(x + d * arm, h - 0.05, z)
            ellipses(cv, [(cu, cvv, 0.3 * cam.f / z, 0.1 * cam.f / z)], color, POLE, z - 0.01)
        r = rng.random()
        if r < 0.35:
            self.sign(x, z - 0.05, rng.uniform(2.0, min(3.0, h - 0.3)))
        elif r < 0.5:
            self.traffic_light(x, z - 0.05, rng.uniform(2.6, min(4.0, h - 0.2)))

    def sign(self, x: float, z: float, y: float) -> None:
        cv, rng, cam = self.cv, self.rng, self.cam
        r = rng.uniform(0.3, 0.55)
        cu, cvv = cam.p(x, y, z)
        rp = r * cam.f / z
        kind = rng.integers(4)
        red, white, blue = _col(rng, (200, 30, 35), 15), _col(rng, (230, 230, 230), 10), _col(rng, (30, 70, 170), 15)
        if kind == 0:  # round: red ring, white or blue disc
            ellipses(cv, [(cu, cvv, rp, rp)], red, SIGN, z)
            ellipses(cv, [(cu, cvv, rp * 0.75, rp * 0.75)], white if rng.random() < 0.6 else blue, SIGN, z - 0.001)
        elif kind == 1:  # warning triangle
            pts = [(cu, cvv - rp), (cu + rp * 1.05, cvv + rp * 0.8), (cu - rp * 1.05, cvv + rp * 0.8)]
            polygon(cv, pts, red, SIGN, z)
            polygon(cv, [(cu, cvv - rp * 0.5), (cu + rp * 0.6, cvv + rp * 0.55), (cu - rp * 0.6, cvv + rp * 0.55)], white, SIGN, z - 0.001)
        elif kind == 2:  # information rectangle with text lines
            col = _pick(rng, [blue, _col(rng, (30, 120, 60), 15), white])
            rect(cv, cu - rp * 1.3, cu + rp * 1.3, cvv - rp * 0.8, cvv + rp * 0.8, col, SIGN, z)
            for k in range(2):
                rect(cv, cu - rp, cu + rp * 0.8, cvv - rp * 0.4 + k * rp * 0.5, cvv - rp * 0.25 + k * rp * 0.5,
                     white if col is not white else _col(rng, (30, 30, 30), 5), SIGN, z - 0.001)
        else:  # yellow diamond
            pts = [(cu, cvv - rp), (cu + rp, cvv), (cu, cvv + rp), (cu - rp, cvv)]
            polygon(cv, pts, _col(rng, (230, 190, 40), 15), SIGN, z)

    def traffic_light(self, x: float, z: float, y: float) -> None:
        cv, rng, cam = self.cv, self.rng, self.cam
        s = cam.f / z
        cu, cvv = cam.p(x, y, z)
        housing = _col(rng, (35, 35, 35) if rng.random() < 0.7 else (200, 170, 40), 8)
        rect(cv, cu - 0.16 * s, cu + 0.16 * s, cvv - 0.45 * s, cvv + 0.45 * s, housing, SIGN, z)
        lit = rng.integers(3)
        for k, c in enumerate([(240, 40, 30), (240, 180, 30), (40, 220, 90)]):
            col = _col(rng, c, 10) if k == lit else _col(rng, (60, 55, 50), 5)
            ellipses(cv, [(cu, cvv + (k - 1) * 0.29 * s, 0.1 * s, 0.1 * s)], col, SIGN, z - 0.001)

    def tree(self, x: float, z: float) -> None:
        cv, rng, cam = self.cv, self.rng, self.cam
        s = cam.f / z
        th, tw = rng.uniform(1.8, 3.5), rng.uniform(0.2, 0.45)
        trunk = _col(rng, (85, 65, 45), 12)
        rect(cv, cam.u(x - tw / 2, z), cam.u(x + tw / 2, z), cam.v(th + 0.5, z), cam.v(0, z), trunk, TREE, z, tex=6, min_w=1.0)
        rad = rng.uniform(1.2, 3.2)
        cy = th + rad * 0.7
        items = []
        for _ in range(int(rng.integers(3, 7))):
            dx, dy = rng.uniform(-0.6, 0.6) * rad, rng.uniform(-0.35, 0.45) * rad
            rr = rng.uniform(0.5, 0.9) * rad
            cu, cvv = cam.p(x + dx, cy + dy, z)
            items.append((cu, cvv, rr * s, rr * s * rng.uniform(0.8, 1.1)))
        ellipses(cv, items, _col(rng, _pick(rng, GREENS), 12), TREE, z - 0.1, tex=24, shade=0.5)

    # ----------------------------------------------------------------------- compose

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        rng, cv = self.rng, self.cv
        self.sky()
        self.ground()
        for side in range(2):
            if self.build[side]:
                self.facades(side)
        if rng.random() < 0.45:
            self.end_wall()
        figures: list[tuple[float, Callable[[], None]]] = []

        def add(z: float, fn: Callable[..., None], *args: Any) -> None:
            figures.append((z, lambda: fn(*args)))

        rl, rr = self.road
        for side in range(2):
            if rng.random() < 0.5:
                z0 = rng.uniform(3, 20)
                self.fence(side, z0, z0 + rng.uniform(10, 50))
            sgn = -1.0 if side == 0 else 1.0
            kerb = self.edge(side, "road")
            z = rng.uniform(2.5, 15)
            while z < 90:  # poles along the kerb
                add(z, self.pole, kerb + sgn * rng.uniform(0.3, 0.7), z)
                z += rng.uniform(12, 35)
            if rng.random() < 0.65:  # trees along the sidewalk or verge
                xt = self.edge(side, "walk") + (sgn * self.verge[side] * 0.5 if self.verge[side] else -sgn * 0.6)
                z = rng.uniform(3, 12)
                while z < 100:
                    add(z, self.tree, xt + rng.uniform(-0.3, 0.3), z)
                    z += rng.uniform(7, 20)
            for _ in range(int(rng.integers(0, 4))):  # parked cars along the kerb
                z = rng.uniform(4, 60)
                add(z, self.car, kerb - sgn * rng.uniform(1.0, 1.3), z)
        lanes = [x for x in np.arange(-rl + 1.8, rr - 1.7, 3.5)] or [0.0]
        for _ in range(int(rng.integers(0, 5))):
            z = rng.uniform(5, 70)
            add(z, self.car, float(_pick(rng, lanes)) + rng.uniform(-0.4, 0.4), z)
        for _ in range(int(rng.integers(1, 9))):
            side = int(rng.integers(2))
            a, b = sorted((self.edge(side, "road"), self.edge(side, "walk")))
            x = rng.uniform(a + 0.3, b - 0.3) if b - a > 0.6 else (a + b) / 2
            if rng.random() < 0.15:  # crossing the road
                x = rng.uniform(-rl, rr)
            z = rng.uniform(4, 28)
            h = rng.uniform(1.0, 1.3) if rng.random() < 0.15 else rng.uniform(1.55, 1.9)
            add(z, self.person, x, z, h)
        for _ in range(int(rng.choice(4, p=[0.25, 0.35, 0.25, 0.15]))):
            side = int(rng.integers(2))
            x = self.edge(side, "road") + (1.0 if side == 0 else -1.0) * rng.uniform(0.6, 1.5)
            z = rng.uniform(4, 24)
            add(z, self.cyclist, x, z)
        for _ in range(int(rng.integers(0, 4))):  # a standalone sign on a short post
            side = int(rng.integers(2))
            x = self.edge(side, "road") + (-1.0 if side == 0 else 1.0) * rng.uniform(0.3, 1.0)
            z = rng.uniform(4, 30)
            add(z, self.short_sign, x, z)
        for _, fn in sorted(figures, key=lambda t: -t[0]):
            fn()
        return self.finish(), cv.lbl

    def short_sign(self, x: float, z: float) -> None:
        cam = self.cam
        color = _col(self.rng, (130, 130, 135), 10)
        rect(self.cv, cam.u(x - 0.04, z), cam.u(x + 0.04, z), cam.v(2.2, z), cam.v(0, z), color, POLE, z, min_w=1.0)
        self.sign(x, z - 0.05, self.rng.uniform(2.0, 2.5))

    def finish(self) -> np.ndarray:
        """Lighting, vignette, sensor noise and a slight blur (image only), then uint8."""
        rng, cv = self.rng, self.cv
        light = 1 + f32(rng.uniform(0.05, 0.2)) * self.lf
        if rng.random() < 0.6:  # vignette
            yy = (np.arange(cv.h, dtype=f32)[:, None] / cv.h - 0.5) * 2
            xx = (np.arange(cv.w, dtype=f32)[None, :] / cv.w - 0.5) * 2
            light = light * (1 - f32(rng.uniform(0.1, 0.35)) * (xx**2 + yy**2) / 2)
        gain = (rng.uniform(0.65, 1.2) * rng.uniform(0.92, 1.08, 3)).astype(f32)
        blur = rng.random() < 0.7 and cv.h > 1 and cv.w > 1
        shift = int(rng.integers(2, 5) if blur else rng.integers(3, 6))  # noise: 2**(8-shift) levels
        img = cv.img
        np.multiply(img, light[:, :, None], out=img)
        img *= gain
        img += rng.integers(0, 256, img.shape, dtype=np.uint8) >> shift
        img -= f32(1 << (7 - shift)) - f32(0.5)  # zero mean; +0.5 rounds
        out = np.clip(img, 0, 255, out=img).astype(np.uint8)
        if blur:  # [1 2 1]² / 16, in integers (cheap)
            p = np.pad(out, ((1, 1), (1, 1), (0, 0)), mode="edge").astype(np.uint16)
            v = p[:-2] + 2 * p[1:-1] + p[2:]
            out = ((v[:, :-2] + 2 * v[:, 1:-1] + v[:, 2:] + 8) >> 4).astype(np.uint8)
        return out


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode())


def render_scene(seed: int, split: str, index: int, size: tuple[int, int] = (360, 480)) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (RGB uint8 [H,W,3], CamVid label uint8 [H,W] with 11 = unlabelled)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _split_code(split), int(index)]))
    h, w = int(size[0]), int(size[1])
    return Scene(h, w, rng).render()


# --------------------------------------------------------------------------- writing


def synth_params(n_train: int, n_val: int, size: list[int] | tuple[int, int], seed: int) -> dict[str, Any]:
    if n_train < 1 or n_val < 0:
        raise GasnasError(f"synthetic: need n_train >= 1 and n_val >= 0, got {n_train}, {n_val}")
    if len(size) != 2 or min(size) < 8:
        raise GasnasError(f"synthetic: size must be [H, W] with both >= 8, got {list(size)}")
    if seed < 0:
        raise GasnasError(f"synthetic: seed must be >= 0, got {seed}")
    return {"generator": GENERATOR, "version": VERSION, "n_train": int(n_train), "n_val": int(n_val),
            "size": [int(size[0]), int(size[1])], "seed": int(seed)}


def _split_counts(params: dict[str, Any]) -> dict[str, int]:
    return {k: n for k, n in (("train", params["n_train"]), ("val", params["n_val"])) if n > 0}


def synthetic_state(root: str | Path, params: dict[str, Any]) -> str:
    """'complete' | 'missing' (absent or empty) | a sentence saying what is wrong."""
    root = Path(root)
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return "missing"
    marker = root / MARKER
    if not marker.is_file():
        return f"{root}: exists and is not a gasnas synthetic dataset (no {MARKER})"
    try:
        have = json.loads(marker.read_text())
    except (OSError, ValueError):
        return f"{marker}: unreadable"
    keys = ("generator", "version", "n_train", "n_val", "size", "seed")
    diff = [f"{k}={have.get(k)!r} (wanted {params[k]!r})" for k in keys if have.get(k) != params[k]]
    if diff:
        return f"{root}: holds a synthetic set made with {', '.join(diff)}"
    for split, n in _split_counts(params).items():
        for d in (root / split, root / f"{split}annot"):
            if not d.is_dir() or len([p for p in d.iterdir() if p.suffix == ".png"]) != n:
                return f"{d}: incomplete (expected {n} PNG files)"
    return "complete"


def _file_name(split: str, i: int) -> str:
    return f"{split}_{i:05d}.png"


def png_bytes(a: np.ndarray, photo: bool) -> bytes:
    """A minimal 8-bit PNG (grey [H,W] or RGB [H,W,3]); deterministic for a given zlib.

    Photos use the Up filter + Huffman-only deflate: about the size of Pillow's output on noisy
    images at a third of its time (Pillow tries every filter on every row). Labels: no filter,
    run-length deflate (long runs of one class).
    """
    h, w = a.shape[:2]
    c = 1 if a.ndim == 2 else a.shape[2]
    rows = np.ascontiguousarray(a).reshape(h, w * c)
    raw = np.empty((h, w * c + 1), np.uint8)
    if photo:
        raw[:, 0] = 2  # Up: difference with the row above (row 0 sees zeros)
        raw[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
        z = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    else:
        raw[:, 0] = 0
        raw[:, 1:] = rows
        z = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = z.compress(raw.tobytes()) + z.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2 if c == 3 else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _render_to(task: tuple[str, int, int, tuple[int, int], str]) -> None:
    split, i, seed, size, tmp = task
    img, lbl = render_scene(seed, split, i, size)
    name = _file_name(split, i)
    (Path(tmp) / split / name).write_bytes(png_bytes(img, photo=True))
    (Path(tmp) / f"{split}annot" / name).write_bytes(png_bytes(lbl, photo=False))


README = """# Synthetic street scenes (gasnas)

Procedurally generated by `gasnas data synth` ({generator} v{version}); deterministic from the
seed: the same parameters give byte-identical files. CamVid (SegNet) layout: `train/`,
`trainannot/`, `val/`, `valannot/`, `train.txt`, `val.txt`. Labels: one class index per pixel,
{classes}; 11 = unlabelled (ignored).

Parameters: n_train={n_train}, n_val={n_val}, size={size} (H, W), seed={seed}. See synth.json.
"""


def write_synthetic(
    out: str | Path,
    n_train: int,
    n_val: int,
    size: list[int] | tuple[int, int] = (360, 480),
    seed: int = 0,
    force: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the dataset to `out` atomically (temp folder, then rename). Returns timing stats.

    An `out` that already holds the same complete set is left alone (`skipped: True`).
    """
    from tqdm import tqdm

    out = Path(out)
    params = synth_params(n_train, n_val, size, seed)
    state = synthetic_state(out, params)
    if state == "complete" and not force:
        return {"root": str(out), "skipped": True, "images": 0, "seconds": 0.0, "images_per_s": 0.0}
    if state not in ("missing", "complete") and not force:
        raise GasnasError(f"{state}; use --force to replace it, or choose another --out")
    if out.exists() and not out.is_dir():
        raise GasnasError(f"{out}: exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        counts = _split_counts(params)
        tasks = []
        for split, n in counts.items():
            (tmp / split).mkdir()
            (tmp / f"{split}annot").mkdir()
            lines = [f"{split}/{_file_name(split, i)} {split}annot/{_file_name(split, i)}\n" for i in range(n)]
            (tmp / f"{split}.txt").write_text("".join(lines))
            tasks += [(split, i, params["seed"], tuple(params["size"]), str(tmp)) for i in range(n)]
        t0 = time.perf_counter()
        bar = tqdm(total=len(tasks), desc=f"synth {out.name}", unit="img", disable=not progress)
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=workers) as ex:
                for _ in ex.map(_render_to, tasks, chunksize=4):
                    bar.update()
        else:
            for task in tasks:
                _render_to(task)
                bar.update()
        bar.close()
        seconds = time.perf_counter() - t0
        (tmp / "README.md").write_text(README.format(
            classes=", ".join(f"{i} {c}" for i, c in enumerate(CAMVID_CLASSES)), **params))
        meta = dict(params, classes=list(CAMVID_CLASSES), unlabelled=11, files=counts)
        (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")  # last: marks the set complete
        os.chmod(tmp, 0o755)
        _install(tmp, out, params, replace=force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"root": str(out), "skipped": False, "images": len(tasks), "seconds": seconds,
            "images_per_s": len(tasks) / max(seconds, 1e-9)}


def _install(tmp: Path, out: Path, params: dict[str, Any], replace: bool) -> None:
    """Rename the finished temp folder to `out` (an empty folder is replaced; an old set only if
    `replace`). Another process that finished the same set first is fine."""
    old = None
    if out.exists() and any(out.iterdir()):
        if not replace:
            if synthetic_state(out, params) == "complete":
                return  # written meanwhile by another process
            raise GasnasError(f"{out}: appeared while generating; not replacing it")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
            raise
        if synthetic_state(out, params) != "complete":
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_synthetic(cfg: Any, progress: bool = True) -> Path:
    """Generate the synthetic set of a `DataConfig` at cfg.root unless it is already complete."""
    root = Path(cfg.root)
    params = synth_params(cfg.synth_n_train, cfg.synth_n_val, cfg.synth_size, cfg.synth_seed)
    state = synthetic_state(root, params)
    if state == "complete":
        return root
    if state != "missing":
        raise GasnasError(
            f"{state}; the config asks for n_train={params['n_train']}, n_val={params['n_val']}, "
            f"size={params['size']}, seed={params['seed']}: delete it, point data.root elsewhere, or "
            f"regenerate with `gasnas data synth --out {root} --force`"
        )
    # every image is seeded on its own, so the set is the same whatever the number of workers
    workers = min(8, os.cpu_count() or 1)
    write_synthetic(root, params["n_train"], params["n_val"], params["size"], params["seed"], workers=workers,
                    progress=progress)
    return root

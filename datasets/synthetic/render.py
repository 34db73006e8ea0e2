"""Procedural indoor scenes with exact, geometrically consistent dense labels.

A stand-in for NYU-v2 that needs no download: a pinhole camera inside a box-shaped room,
furniture made of (y-rotated) boxes, spheres and vertical cylinders, all ray-cast with
vectorised numpy. Every label comes from the same ray hit, so they agree exactly:

- ``semantic`` int32 [H, W]: class id of the hit object (``CLASS_NAMES``, NYU-v2's 13-class
  list and order), ``-1`` (ignore) on a one-pixel line along label boundaries.
- ``depth`` float32 [H, W, 1]: z-depth in metres of the hit point; ``0`` where invalid
  (windows, which a depth sensor sees through, and random sensor holes).
- ``normal`` float32 [H, W, 3]: unit surface normal in camera coordinates, x right, y up,
  z towards the viewer (so surfaces facing the camera have n_z > 0; channel 0 is the one
  a horizontal flip negates, as in the NYU-v2 release); all-zero exactly where depth is 0.
- ``image`` float32 [H, W, 3] in [0, 1]: object colour x procedural texture x Lambertian
  shading, plus a little noise.

Examples are deterministic by ``(seed, index)``: each draws from its own
``np.random.default_rng([seed, index])``, so any example can be regenerated alone.
The figure in ``docs/synthetic_samples.png`` is made by
``python -m mtpsl_datasets.synthetic.render --figure docs/synthetic_samples.png``.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

CLASS_NAMES = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "picture", "sofa", "table", "tv", "wall", "window",
)
NUM_CLASSES = len(CLASS_NAMES)
(BED, BOOKS, CEILING, CHAIR, FLOOR, FURNITURE, OBJECTS,
 PICTURE, SOFA, TABLE, TV, WALL, WINDOW) = range(NUM_CLASSES)

HFOV_DEGREES = 60.0  # horizontal field of view, close to the Kinect's of NYU-v2
IGNORE_LABEL = -1
_EPS = 1e-9

# Texture kinds of a Material.
PLAIN, CHECKER, STRIPES, NOISE = range(4)

# Base colours (RGB in [0, 1]) per class; each object jitters its own.
_PALETTE = (
    (0.55, 0.35, 0.45), (0.70, 0.25, 0.20), (0.92, 0.92, 0.90), (0.45, 0.30, 0.18),
    (0.55, 0.42, 0.30), (0.60, 0.48, 0.36), (0.25, 0.50, 0.70), (0.80, 0.70, 0.35),
    (0.30, 0.40, 0.55), (0.50, 0.33, 0.20), (0.08, 0.08, 0.10), (0.82, 0.80, 0.72),
    (0.85, 0.92, 1.00),
)
# Colours for colourise_semantic (index = class id); ignore is black.
_LABEL_COLOURS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (0, 180, 255),
)


# --------------------------------------------------------------------------- scene
@dataclasses.dataclass(frozen=True)
class Material:
    """Appearance of one surface: class id, RGB colour, texture kind/scale/contrast."""

    label: int
    colour: tuple
    texture: int = PLAIN
    scale: float = 0.2
    contrast: float = 0.0


@dataclasses.dataclass(frozen=True)
class Box:
    """Box of half extents ``half`` (x, y, z) at ``centre``, rotated by ``yaw`` about +y."""

    centre: np.ndarray
    half: np.ndarray
    yaw: float
    material: int


@dataclasses.dataclass(frozen=True)
class Sphere:
    centre: np.ndarray
    radius: float
    material: int


@dataclasses.dataclass(frozen=True)
class Cylinder:
    """Vertical cylinder: base centre ``base`` (x, y, z), ``radius``, ``height`` (top cap only)."""

    base: np.ndarray
    radius: float
    height: float
    material: int


@dataclasses.dataclass(frozen=True)
class Window:
    """Window on room wall ``wall`` (surface id 2..5): world x/z span ``lo..hi``, y span."""

    wall: int
    lo: float
    hi: float
    y0: float
    y1: float


@dataclasses.dataclass(frozen=True)
class Scene:
    """Everything needed to render one example at any resolution.

    The room is ``[0, size_x] x [0, size_y] x [0, size_z]`` (y up). ``rotation`` maps camera
    coordinates (x right, y up, looking along -z) to world coordinates; ``origin`` is the
    camera centre. Materials 0..5 are floor, ceiling, walls x=0, x=max, z=0, z=max.
    """

    size: np.ndarray
    origin: np.ndarray
    rotation: np.ndarray
    light: np.ndarray
    materials: tuple
    boxes: tuple
    spheres: tuple
    cylinders: tuple
    windows: tuple
    noise_seed: int


def _rot_x(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _jitter(rng, colour, amount=0.08):
    return tuple(np.clip(np.asarray(colour) + rng.uniform(-amount, amount, 3), 0.02, 1.0))


class _Builder:
    """Collects primitives and floor footprints while a scene is sampled."""

    def __init__(self, rng, size, camera_xz):
        self.rng = rng
        self.size = size
        self.materials = []
        self.boxes, self.spheres, self.cylinders, self.windows = [], [], [], []
        # Axis-aligned floor rectangles (x0, z0, x1, z1) already taken; the camera's first.
        cx, cz = camera_xz
        self.footprints = [(cx - 0.5, cz - 0.5, cx + 0.5, cz + 0.5)]
        self.wall_spans = {2: [], 3: [], 4: []}

    def material(self, label, texture=None, colour=None):
        rng = self.rng
        colour = _jitter(rng, _PALETTE[label] if colour is None else colour)
        texture = rng.choice([PLAIN, CHECKER, STRIPES, NOISE]) if texture is None else texture
        self.materials.append(Material(label, colour, int(texture), float(rng.uniform(0.05, 0.3)),
                                       float(rng.uniform(0.08, 0.3))))
        return len(self.materials) - 1

    def box(self, frame, local_centre, half, material):
        """Adds a box given in a frame (origin, yaw): world = origin + R_y(yaw) @ local."""
        origin, yaw = frame
        centre = origin + _rot_y(yaw) @ np.asarray(local_centre, float)
        self.boxes.append(Box(centre, np.asarray(half, float), float(yaw), material))

    def reserve(self, frame, local_lo, local_hi, ignore=()):
        """Reserves the floor rectangle of a local x/z extent; False if it collides."""
        origin, yaw = frame
        corners = [origin + _rot_y(yaw) @ np.array([x, 0.0, z])
                   for x in (local_lo[0], local_hi[0]) for z in (local_lo[1], local_hi[1])]
        xs, zs = [c[0] for c in corners], [c[2] for c in corners]
        rect = (min(xs), min(zs), max(xs), max(zs))
        margin = 0.05
        if rect[0] < -margin or rect[1] < -margin or rect[2] > self.size[0] + margin \
                or rect[3] > self.size[2] + margin:
            return False
        for i, other in enumerate(self.footprints):
            if i in ignore:
                continue
            if rect[0] < other[2] and other[0] < rect[2] and rect[1] < other[3] and other[1] < rect[3]:
                return False
        self.footprints.append(rect)
        return True

    def wall_frame(self, wall, along):
        """Frame on a wall (2: x=0, 3: x=max, 4: z=0): local x along it, local z into the room."""
        sx, _, sz = self.size
        if wall == 2:
            return np.array([0.0, 0.0, sz - along]), np.pi / 2
        if wall == 3:
            return np.array([sx, 0.0, along]), -np.pi / 2
        return np.array([along, 0.0, 0.0]), 0.0

    def wall_length(self, wall):
        return self.size[2] if wall in (2, 3) else self.size[0]

    def reserve_wall_span(self, wall, lo, hi):
        if any(lo < b and a < hi for a, b in self.wall_spans[wall]):
            return False
        self.wall_spans[wall].append((lo, hi))
        return True


def _place_against_wall(b, width, depth, tries=8):
    """Finds a free wall spot for a width x depth footprint; returns its frame or None."""
    for _ in range(tries):
        wall = int(b.rng.integers(2, 5))
        length = b.wall_length(wall)
        if length < width + 0.2:
            continue
        along = b.rng.uniform(0.1 + width / 2, length - 0.1 - width / 2)
        frame = b.wall_frame(wall, along)
        if b.reserve(frame, (-width / 2, 0.0), (width / 2, depth)):
            return frame
    return None


def _against_wall(b, *ranges):
    """Draws sizes (width, depth, ...) uniformly from `ranges`, in order, and a free wall
    spot for the width x depth footprint: (frame or None, sizes)."""
    sizes = [b.rng.uniform(low, high) for low, high in ranges]
    return _place_against_wall(b, sizes[0], sizes[1]), sizes


def _add_bed(b):
    rng = b.rng
    frame, (w, d, h) = _against_wall(b, (1.3, 1.8), (1.9, 2.1), (0.45, 0.6))
    if frame is None:
        return
    mat = b.material(BED, texture=rng.choice([PLAIN, STRIPES, CHECKER]))
    b.box(frame, (0, h / 2, d / 2 + 0.05), (w / 2, h / 2, d / 2 - 0.05), mat)
    hb = rng.uniform(0.9, 1.2)
    b.box(frame, (0, hb / 2, 0.04), (w / 2 + 0.03, hb / 2, 0.04), b.material(BED, texture=NOISE))
    pillow = b.material(OBJECTS, colour=(0.9, 0.9, 0.88), texture=PLAIN)
    b.box(frame, (0, h + 0.07, 0.35), (w / 2 - 0.15, 0.07, 0.18), pillow)


def _add_sofa(b):
    rng = b.rng
    frame, (w, d) = _against_wall(b, (1.6, 2.3), (0.8, 0.95))
    if frame is None:
        return
    mat = b.material(SOFA, texture=rng.choice([PLAIN, NOISE]))
    seat, back, arm = 0.42, rng.uniform(0.8, 0.9), 0.16
    b.box(frame, (0, seat / 2, d / 2), (w / 2 - arm, seat / 2, d / 2), mat)
    b.box(frame, (0, back / 2, 0.11), (w / 2 - arm, back / 2, 0.11), mat)
    for side in (-1, 1):
        b.box(frame, (side * (w / 2 - arm / 2), 0.3, d / 2), (arm / 2, 0.3, d / 2), mat)


def _add_cabinet(b):
    rng = b.rng
    frame, (w, d, h) = _against_wall(b, (0.6, 1.5), (0.35, 0.55), (0.5, 2.0))
    if frame is None:
        return
    b.box(frame, (0, h / 2, d / 2), (w / 2, h / 2, d / 2),
          b.material(FURNITURE, texture=rng.choice([PLAIN, STRIPES, NOISE])))
    if h < 1.0 and rng.random() < 0.6:  # a TV on low furniture
        tw, th = min(w - 0.05, rng.uniform(0.6, 1.1)), rng.uniform(0.35, 0.6)
        b.box(frame, (0, h + th / 2, d / 2), (tw / 2, th / 2, 0.03), b.material(TV, texture=PLAIN))
    elif rng.random() < 0.8:  # a row of books on top
        x = -w / 2 + 0.05
        for _ in range(int(rng.integers(2, 9))):
            bw, bh, bd = rng.uniform(0.03, 0.07), rng.uniform(0.18, 0.3), rng.uniform(0.15, 0.22)
            if x + bw > w / 2 - 0.02:
                break
            colour = rng.uniform(0.1, 0.9, 3)
            b.box(frame, (x + bw / 2, h + bh / 2, bd / 2 + 0.02), (bw / 2, bh / 2, bd / 2),
                  b.material(BOOKS, colour=colour, texture=PLAIN))
            x += bw + 0.003


def _add_chair(b, origin, yaw, mat, table_index):
    frame = (origin, yaw)
    if not b.reserve(frame, (-0.23, -0.23), (0.23, 0.23), ignore=(table_index,)):
        return
    seat, back = 0.45, 0.45
    b.box(frame, (0, seat, 0), (0.22, 0.025, 0.22), mat)
    b.box(frame, (0, seat + back / 2, 0.2), (0.22, back / 2, 0.02), mat)
    for sx in (-1, 1):
        for sz in (-1, 1):
            b.box(frame, (sx * 0.19, seat / 2, sz * 0.19), (0.02, seat / 2, 0.02), mat)


def _add_table(b, cam_z):
    rng = b.rng
    sx, _, _ = b.size
    w, d, h = rng.uniform(0.8, 1.5), rng.uniform(0.6, 0.9), rng.uniform(0.7, 0.78)
    for _ in range(8):
        origin = np.array([rng.uniform(0.6, sx - 0.6), 0.0, rng.uniform(0.6, cam_z - 1.3)])
        yaw = rng.uniform(-np.pi, np.pi)
        if b.reserve((origin, yaw), (-w / 2, -d / 2), (w / 2, d / 2)):
            break
    else:
        return
    frame = (origin, yaw)
    table_index = len(b.footprints) - 1
    mat = b.material(TABLE, texture=rng.choice([PLAIN, STRIPES, NOISE]))
    b.box(frame, (0, h - 0.02, 0), (w / 2, 0.02, d / 2), mat)
    for lx in (-1, 1):
        for lz in (-1, 1):
            b.box(frame, (lx * (w / 2 - 0.06), (h - 0.04) / 2, lz * (d / 2 - 0.06)),
                  (0.025, (h - 0.04) / 2, 0.025), mat)
    chair_mat = b.material(CHAIR, texture=rng.choice([PLAIN, NOISE]))
    spots = [((0, 0, -(d / 2 + 0.25)), 0.0), ((0, 0, d / 2 + 0.25), np.pi),
             ((-(w / 2 + 0.25), 0, 0), np.pi / 2), ((w / 2 + 0.25, 0, 0), -np.pi / 2)]
    for k in rng.permutation(4)[: int(rng.integers(0, 4))]:
        local, turn = spots[k]
        # The chair's back (local +z) is away from the table.
        _add_chair(b, origin + _rot_y(yaw) @ np.array(local, float), yaw + turn + np.pi, chair_mat,
                   table_index)
    for _ in range(int(rng.integers(0, 3))):  # things on the table top
        p = origin + _rot_y(yaw) @ np.array([rng.uniform(-w / 2 + 0.15, w / 2 - 0.15), 0,
                                             rng.uniform(-d / 2 + 0.15, d / 2 - 0.15)])
        _add_small_object(b, p, h, small=True)


def _add_small_object(b, xz, floor_y, small):
    rng = b.rng
    mat = b.material(OBJECTS, colour=rng.uniform(0.15, 0.95, 3))
    scale = 0.5 if small else 1.0
    if rng.random() < 0.5:
        r = rng.uniform(0.06, 0.3) * scale
        b.spheres.append(Sphere(np.array([xz[0], floor_y + r, xz[2]]), float(r), mat))
    else:
        r, h = rng.uniform(0.06, 0.2) * scale, rng.uniform(0.2, 0.6) * scale
        b.cylinders.append(Cylinder(np.array([xz[0], floor_y, xz[2]]), float(r), float(h), mat))


def _add_floor_object(b, cam_z):
    rng = b.rng
    for _ in range(6):
        p = np.array([rng.uniform(0.3, b.size[0] - 0.3), 0.0, rng.uniform(0.3, cam_z - 0.8)])
        if b.reserve((p, 0.0), (-0.3, -0.3), (0.3, 0.3)):
            _add_small_object(b, p, 0.0, small=False)
            return


def _add_wall_item(b, label):
    """Picture, wall-mounted TV or window: a span on a wall that nothing else uses."""
    rng = b.rng
    sizes = {PICTURE: ((0.3, 1.0), (0.3, 0.8), (1.2, 1.7)), TV: ((0.7, 1.2), (0.4, 0.7), (1.0, 1.4)),
             WINDOW: ((0.6, 1.4), (1.0, 1.4), (0.8, 1.0))}[label]
    w, h, y0 = (rng.uniform(*r) for r in sizes)
    for _ in range(6):
        wall = int(rng.integers(2, 5))
        length = b.wall_length(wall)
        if length < w + 0.4:
            continue
        along = rng.uniform(0.2 + w / 2, length - 0.2 - w / 2)
        if not b.reserve_wall_span(wall, along - w / 2, along + w / 2):
            continue
        y1 = min(y0 + h, b.size[1] - 0.15)
        if label == WINDOW:
            lo, hi = sorted(b.wall_frame(wall, a)[0][2 if wall in (2, 3) else 0]
                            for a in (along - w / 2, along + w / 2))
            b.windows.append(Window(wall, float(lo), float(hi), float(y0), float(y1)))
        else:
            thick = 0.025 if label == PICTURE else 0.05
            b.box(b.wall_frame(wall, along), (0, (y0 + y1) / 2, thick), ((w / 2, (y1 - y0) / 2, thick)),
                  b.material(label, texture=NOISE if label == PICTURE else PLAIN,
                             colour=rng.uniform(0.1, 0.95, 3) if label == PICTURE else None))
        return


def sample_scene(index: int, seed: int) -> Scene:
    """The scene of example ``index`` of stream ``seed`` (non-negative ints), resolution-free."""
    for name, value in (("index", index), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    rng = np.random.default_rng([int(seed), int(index)])
    size = np.array([rng.uniform(3.5, 6.5), rng.uniform(2.5, 3.1), rng.uniform(4.0, 7.0)])
    cam = np.array([size[0] * rng.uniform(0.3, 0.7), rng.uniform(1.1, 1.6),
                    size[2] - rng.uniform(0.3, 0.8)])
    rotation = (_rot_y(np.radians(rng.uniform(-35, 35))) @ _rot_x(-np.radians(rng.uniform(8, 25)))
                @ _rot_z(np.radians(rng.uniform(-2, 2))))
    b = _Builder(rng, size, (cam[0], cam[2]))
    wall_colour = _jitter(rng, _PALETTE[WALL], 0.12)
    b.material(FLOOR, texture=rng.choice([CHECKER, STRIPES, NOISE]))
    b.material(CEILING, texture=PLAIN)
    for _ in range(4):
        b.material(WALL, texture=rng.choice([PLAIN, PLAIN, NOISE]), colour=wall_colour)
    if rng.random() < 0.35:
        _add_bed(b)
    if rng.random() < 0.45:
        _add_sofa(b)
    for _ in range(int(rng.integers(1, 4))):
        _add_cabinet(b)
    if rng.random() < 0.75:
        _add_table(b, cam[2])
    for _ in range(int(rng.integers(0, 3))):
        _add_floor_object(b, cam[2])
    for label, most in ((PICTURE, 3), (WINDOW, 3), (TV, 2)):
        for _ in range(int(rng.integers(0, most))):
            _add_wall_item(b, label)
    light = np.array([rng.uniform(0.2, 0.8) * size[0], size[1] - 0.3, rng.uniform(0.2, 0.8) * size[2]])
    return Scene(size, cam, rotation, light, tuple(b.materials), tuple(b.boxes), tuple(b.spheres),
                 tuple(b.cylinders), tuple(b.windows), int(rng.integers(0, 2**31)))


# --------------------------------------------------------------------------- camera
def intrinsics(height: int, width: int) -> tuple:
    """(focal, cx, cy) in pixels of the pinhole camera (square pixels, HFOV_DEGREES)."""
    focal = width / (2.0 * np.tan(np.radians(HFOV_DEGREES) / 2.0))
    return focal, width / 2.0, height / 2.0


def camera_rays(height: int, width: int) -> np.ndarray:
    """[H, W, 3] camera-space ray directions through pixel centres, scaled so z = -1.

    With this scaling the ray parameter of a hit is its z-depth.
    """
    focal, cx, cy = intrinsics(height, width)
    x = (np.arange(width) + 0.5 - cx) / focal
    y = -(np.arange(height) + 0.5 - cy) / focal
    rays = np.empty((height, width, 3))
    rays[..., 0] = x[None, :]
    rays[..., 1] = y[:, None]
    rays[..., 2] = -1.0
    return rays


def backproject(depth: np.ndarray) -> np.ndarray:
    """Camera-space points [H, W, 3] of a z-depth map [H, W] or [H, W, 1] (metres)."""
    depth = np.asarray(depth, np.float64)
    depth = depth[..., 0] if depth.ndim == 3 else depth
    return camera_rays(*depth.shape) * depth[..., None]


# --------------------------------------------------------------------------- ray casting
class _Hits:
    """Nearest hit so far per pixel: ray parameter, material id and world normal."""

    def __init__(self, shape):
        self.t = np.full(shape, np.inf)
        self.material = np.zeros(shape, np.int32)
        self.normal = np.zeros(shape + (3,))

    def update(self, window, t, material, normal_fn):
        """Keeps hits ``t`` (inf = miss) over the pixel ``window`` where they are nearer."""
        closer = t < self.t[window]
        if not closer.any():
            return
        self.t[window][closer] = t[closer]
        self.material[window][closer] = material
        self.normal[window][closer] = normal_fn(closer)


def _screen_windows(scene, corners, shape):
    """Per primitive, the pixel slices covering the projection of its world points [P, K, 3]."""
    height, width = shape
    cam = (corners - scene.origin) @ scene.rotation  # camera coordinates
    behind = np.any(cam[..., 2] > -1e-3, axis=1)  # straddles the camera plane: every pixel
    focal, cx, cy = intrinsics(height, width)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = focal * cam[..., 0] / -cam[..., 2] + cx
        v = -focal * cam[..., 1] / -cam[..., 2] + cy
    u0 = np.clip(np.floor(u.min(1)) - 1, 0, width).astype(int)
    u1 = np.clip(np.ceil(u.max(1)) + 1, 0, width).astype(int)
    v0 = np.clip(np.floor(v.min(1)) - 1, 0, height).astype(int)
    v1 = np.clip(np.ceil(v.max(1)) + 1, 0, height).astype(int)
    return [(slice(0, height), slice(0, width)) if far else (slice(a, b), slice(c, d))
            for far, a, b, c, d in zip(behind.tolist(), v0.tolist(), v1.tolist(), u0.tolist(),
                                       u1.tolist())]


def _cube_corners(centre, half, yaw=None):
    """Corners [P, 8, 3] of boxes with centres/half extents [P, 3] and yaws [P] (None: 0)."""
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    local = signs * np.asarray(half)[:, None, :]
    if yaw is not None:
        c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
        local = np.stack([c * local[..., 0] + s * local[..., 2], local[..., 1],
                          -s * local[..., 0] + c * local[..., 2]], -1)
    return np.asarray(centre)[:, None, :] + local


def _safe(d):
    """Ray direction components with exact zeros nudged, so 1/d is finite."""
    return np.where(np.abs(d) < _EPS, _EPS, d)


# Ray directions are passed as three contiguous [H, W] arrays (dx, dy, dz): numpy reduces over a
# trailing axis of size 3 slowly, and every pixel op here is elementwise.
def _cast_room(scene, d, hits):
    """The room seen from inside: the exit point of the ray through the room's box."""
    o, size = scene.origin, scene.size
    t_axis = [np.where(di > 0, (size[k] - o[k]) / di, -o[k] / di) for k, di in enumerate(d)]
    t = np.minimum(np.minimum(t_axis[0], t_axis[1]), t_axis[2])
    on_y = t_axis[1] == t
    on_x = (t_axis[0] == t) & ~on_y
    on_z = ~(on_x | on_y)
    # Material ids: 0 floor, 1 ceiling, 2 wall x=0, 3 wall x=max, 4 wall z=0, 5 wall z=max.
    material = np.where(on_y, (d[1] > 0).astype(np.int32),
                        np.where(on_x, 2 + (d[0] > 0), 4 + (d[2] > 0)))
    hits.t[...] = t
    hits.material[...] = material
    for k, on in enumerate((on_x, on_y, on_z)):
        hits.normal[..., k] = np.where(on, -np.sign(d[k]), 0.0)


def _cast_box(scene, box, window, d, hits):
    dx, dy, dz = (di[window] for di in d)
    rot = _rot_y(box.yaw)
    c, s = rot[0, 0], rot[0, 2]
    o_local = (scene.origin - box.centre) @ rot  # R^T (o - c)
    d_local = (c * dx - s * dz, dy, s * dx + c * dz)
    t_near, t_far = [], []
    with np.errstate(divide="ignore"):  # a zero component gives +-inf: the slab test still works
        inverse = [1.0 / dk for dk in d_local]
    for k in range(3):
        t1 = (-box.half[k] - o_local[k]) * inverse[k]
        t2 = (box.half[k] - o_local[k]) * inverse[k]
        t_near.append(np.minimum(t1, t2))
        t_far.append(np.maximum(t1, t2))
    near = np.maximum(np.maximum(t_near[0], t_near[1]), t_near[2])
    far = np.minimum(np.minimum(t_far[0], t_far[1]), t_far[2])
    t = np.where((near <= far) & (near > 1e-6), near, np.inf)

    def normal_fn(mask):
        n_local = np.stack([np.where(t_near[k][mask] == near[mask], -np.sign(d_local[k][mask]), 0.0)
                            for k in range(3)], -1)
        n_local[:, 1] *= n_local[:, 0] == 0  # an exact edge hit: keep one face's normal
        n_local[:, 2] *= (n_local[:, 0] == 0) & (n_local[:, 1] == 0)
        return n_local @ rot.T

    hits.update(window, t, box.material, normal_fn)


def _cast_sphere(scene, sphere, window, d, hits):
    dx, dy, dz = (di[window] for di in d)
    oc = scene.origin - sphere.centre
    a = dx * dx + dy * dy + dz * dz
    b = dx * oc[0] + dy * oc[1] + dz * oc[2]
    disc = b * b - a * (oc @ oc - sphere.radius**2)
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    t = np.where((disc > 0) & (t > 1e-6), t, np.inf)

    def normal_fn(mask):
        dm = np.stack([dx[mask], dy[mask], dz[mask]], -1)
        return (oc + t[mask][:, None] * dm) / sphere.radius

    hits.update(window, t, sphere.material, normal_fn)


def _cast_cylinder(scene, cyl, window, d, hits):
    top = cyl.base + np.array([0.0, cyl.height, 0.0])
    dx, dy, dz = (di[window] for di in d)
    o = scene.origin
    ox, oz = o[0] - cyl.base[0], o[2] - cyl.base[2]
    a = dx * dx + dz * dz
    b = dx * ox + dz * oz
    disc = b * b - a * (ox * ox + oz * oz - cyl.radius**2)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(disc)) / a
    y_side = o[1] + t_side * dy
    side_ok = (disc > 0) & (t_side > 1e-6) & (y_side >= cyl.base[1]) & (y_side <= top[1])
    t_cap = (top[1] - o[1]) / _safe(dy)
    px, pz = ox + t_cap * dx, oz + t_cap * dz
    cap_ok = (t_cap > 1e-6) & (px * px + pz * pz <= cyl.radius**2) & (dy < 0)
    t_side = np.where(side_ok, t_side, np.inf)
    t_cap = np.where(cap_ok, t_cap, np.inf)
    t = np.minimum(t_side, t_cap)

    def normal_fn(mask):
        tm = t[mask]
        side = np.stack([ox + tm * dx[mask], np.zeros_like(tm), oz + tm * dz[mask]], -1) / cyl.radius
        return np.where((t_cap[mask] < t_side[mask])[:, None], np.array([0.0, 1.0, 0.0]), side)

    hits.update(window, t, cyl.material, normal_fn)


def _cast(scene, height, width):
    """Ray-casts the scene: (hits, world ray directions [H, W, 3] with camera z = -1)."""
    d = camera_rays(height, width) @ scene.rotation.T
    components = tuple(np.ascontiguousarray(_safe(d[..., k])) for k in range(3))
    hits = _Hits((height, width))
    _cast_room(scene, components, hits)
    shape = (height, width)
    # Each primitive is tested only on the pixels its bounding box projects to.
    if scene.boxes:
        corners = _cube_corners([b.centre for b in scene.boxes], [b.half for b in scene.boxes],
                                np.array([b.yaw for b in scene.boxes]))
        for box, window in zip(scene.boxes, _screen_windows(scene, corners, shape)):
            _cast_box(scene, box, window, components, hits)
    if scene.spheres:
        corners = _cube_corners([s.centre for s in scene.spheres],
                                [np.full(3, s.radius) for s in scene.spheres])
        for sphere, window in zip(scene.spheres, _screen_windows(scene, corners, shape)):
            _cast_sphere(scene, sphere, window, components, hits)
    if scene.cylinders:
        corners = _cube_corners([c.base + [0, c.height / 2, 0] for c in scene.cylinders],
                                [[c.radius, c.height / 2, c.radius] for c in scene.cylinders])
        for cyl, window in zip(scene.cylinders, _screen_windows(scene, corners, shape)):
            _cast_cylinder(scene, cyl, window, components, hits)
    return hits, d


def _window_mask(scene, hits, points):
    """Pixels whose hit lies in a window of the room's walls."""
    mask = np.zeros(hits.t.shape, bool)
    for win in scene.windows:
        along = points[..., 2] if win.wall in (2, 3) else points[..., 0]
        mask |= ((hits.material == win.wall) & (along >= win.lo) & (along <= win.hi)
                 & (points[..., 1] >= win.y0) & (points[..., 1] <= win.y1))
    return mask


# --------------------------------------------------------------------------- appearance
def _tangents(n):
    """Two unit tangents [..., 3] of unit normals n [..., 3] (edge-aligned on boxes and walls)."""
    nx, ny, nz = n[..., 0], n[..., 1], n[..., 2]
    vertical = np.abs(ny) > 0.9  # t1 = n x e_x there, else n x e_y
    t1 = np.stack([np.where(vertical, 0.0, -nz), np.where(vertical, nz, 0.0),
                   np.where(vertical, -ny, nx)], -1)
    t1 /= np.maximum(np.linalg.norm(t1, axis=-1, keepdims=True), _EPS)
    return t1, np.cross(n, t1)


def _pattern(kind, us, vs, phase):
    """Texture pattern in [0, 1] of one kind at surface coordinates (in texture periods)."""
    if kind == CHECKER:
        return (np.floor(us + 1e-6) + np.floor(vs + 1e-6)) % 2
    if kind == STRIPES:
        return 0.5 + 0.5 * np.sin(2 * np.pi * us + 0.6 * np.sin(vs * 0.7 + phase))
    return (np.sin(3.1 * us + phase) * np.sin(2.3 * vs - phase) + 0.5 * np.sin(7.7 * us + 5.3 * vs)
            + 0.25 * np.sin(13.1 * vs - 11.3 * us + phase)) / 3.5 + 0.5


def _texture(scene, hits, points):
    """Per-pixel texture factor in (0, 1] from coordinates in the surface's own plane."""
    mats = scene.materials
    kind = np.array([m.texture for m in mats])[hits.material]
    factor = np.ones(hits.t.shape)
    for k in (CHECKER, STRIPES, NOISE):
        mask = kind == k
        if not mask.any():
            continue
        material = hits.material[mask]
        n, p = hits.normal[mask], points[mask]
        t1, t2 = _tangents(n)
        scale = np.array([m.scale for m in mats])[material]
        us = np.einsum("ik,ik->i", p, t1) / scale
        vs = np.einsum("ik,ik->i", p, t2) / scale
        contrast = np.array([m.contrast for m in mats])[material]
        factor[mask] = 1.0 - contrast * _pattern(k, us, vs, material * 1.7)
    return factor


def _shade(scene, hits, points, d):
    """Lambertian shading from a point light near the ceiling, plus ambient and a fill light."""
    to_light = scene.light - points
    dist = np.linalg.norm(to_light, axis=-1, keepdims=True)
    diffuse = np.clip(np.einsum("...k,...k->...", hits.normal, to_light / dist), 0, None)
    view = -d / np.linalg.norm(d, axis=-1, keepdims=True)
    fill = np.clip(np.einsum("...k,...k->...", hits.normal, view), 0, None)
    falloff = 1.0 / (1.0 + 0.03 * dist[..., 0] ** 2)
    return 0.3 + 0.6 * diffuse * falloff + 0.25 * fill


def _sensor_holes(rng, shape):
    """0..3 random elliptical holes where the depth sensor gave nothing."""
    height, width = shape
    yy, xx = np.mgrid[:height, :width] + 0.5
    mask = np.zeros(shape, bool)
    for _ in range(int(rng.integers(0, 4))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.015, 0.06, 2) * width
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return mask


def _boundary_ignore(label):
    """One-pixel line (on the upper/left side) where the label changes."""
    edge = np.zeros(label.shape, bool)
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge[:-1, :] |= label[:-1, :] != label[1:, :]
    return edge


def render_scene(scene: Scene, height: int, width: int) -> dict:
    """Renders ``scene``: dict(image [H,W,3] f32, semantic [H,W] i32, depth [H,W,1] f32,
    normal [H,W,3] f32) as described in the module docstring."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
    hits, d = _cast(scene, height, width)
    points = scene.origin + hits.t[..., None] * d
    labels = np.array([m.label for m in scene.materials], np.int32)[hits.material]
    window = _window_mask(scene, hits, points)
    labels[window] = WINDOW
    colours = np.array([m.colour for m in scene.materials])[hits.material]
    image = colours * (_texture(scene, hits, points) * _shade(scene, hits, points, d))[..., None]
    # Through a window: a bright sky gradient.
    sky = np.array([0.75, 0.85, 1.0]) * (0.85 + 0.15 * np.clip(points[..., 1:2] / scene.size[1], 0, 1))
    image = np.where(window[..., None], sky, image)
    rng = np.random.default_rng(scene.noise_seed)
    image = image.astype(np.float32) + rng.standard_normal(image.shape, np.float32) * np.float32(0.01)
    image = np.clip(image, 0.0, 1.0)
    invalid = window | _sensor_holes(rng, (height, width))
    depth = np.where(invalid, 0.0, hits.t)
    normal = np.where(invalid[..., None], 0.0, hits.normal @ scene.rotation)  # world -> camera
    semantic = np.where(_boundary_ignore(labels), IGNORE_LABEL, labels)
    return {
        "image": image.astype(np.float32),
        "semantic": semantic.astype(np.int32),
        "depth": depth[..., None].astype(np.float32),
        "normal": normal.astype(np.float32),
    }


def render_example(index: int, height: int, width: int, seed: int = 0) -> dict:
    """Example ``index`` of stream ``seed`` at ``height`` x ``width``.

    Returns dict(image float32 [H,W,3] in [0,1], semantic int32 [H,W] in [-1, NUM_CLASSES),
    depth float32 [H,W,1] metres (0 = invalid), normal float32 [H,W,3] unit or all-zero).
    """
    return render_scene(sample_scene(index, seed), height, width)


def split_seed(seed: int, split: str) -> int:
    """The seed stream of a split: train uses ``seed``, test ``seed + 2**32`` (never a train seed
    of another 32-bit ``seed``), so the splits never share an example."""
    offsets = {"train": 0, "test": 2**32}
    if split not in offsets:
        raise ValueError(f"split must be one of {sorted(offsets)}, got {split!r}")
    return int(seed) + offsets[split]


# --------------------------------------------------------------------------- pictures
def colourise_semantic(label: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] colours of a label map [H, W]; ignore (-1) is black."""
    table = np.concatenate([np.array(_LABEL_COLOURS, np.uint8), np.zeros((1, 3), np.uint8)])
    label = np.asarray(label)
    if label.min(initial=0) < -1 or label.max(initial=0) >= NUM_CLASSES:
        raise ValueError(f"labels must be in [-1, {NUM_CLASSES}), got [{label.min()}, {label.max()}]")
    return table[np.where(label < 0, NUM_CLASSES, label)]


def colourise_depth(depth: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] colour map of a depth map [H, W(, 1)] (near warm, far cool; 0 black)."""
    depth = np.asarray(depth, np.float64)
    depth = depth[..., 0] if depth.ndim == 3 else depth
    valid = depth > 0
    lo, hi = (depth[valid].min(), depth[valid].max()) if valid.any() else (0.0, 1.0)
    x = np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
    stops = np.array([[0.99, 0.91, 0.15], [0.95, 0.45, 0.10], [0.75, 0.15, 0.35],
                      [0.35, 0.10, 0.55], [0.05, 0.05, 0.30]])
    pos = x * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    frac = (pos - i)[..., None]
    rgb = stops[i] * (1 - frac) + stops[i + 1] * frac
    return (np.where(valid[..., None], rgb, 0.0) * 255).round().astype(np.uint8)


def sample_figure(num: int = 4, height: int = 192, width: int = 256, seed: int = 0) -> np.ndarray:
    """uint8 grid [num*H, 4*W, 3]: per row image, semantic, depth, normals ((n+1)/2)."""
    rows = []
    for index in range(num):
        ex = render_example(index, height, width, seed)
        normal = np.where(ex["depth"] > 0, (ex["normal"] + 1) / 2, 0.0)
        rows.append(np.concatenate([
            (ex["image"] * 255).round().astype(np.uint8), colourise_semantic(ex["semantic"]),
            colourise_depth(ex["depth"]), (normal * 255).round().astype(np.uint8)], axis=1))
    return np.concatenate(rows, axis=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Synthetic indoor scenes: write a sample figure.")
    parser.add_argument("--figure", required=True, help="output PNG path")
    parser.add_argument("--num", type=int, default=4)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from PIL import Image  # only the figure needs Pillow

    Image.fromarray(sample_figure(args.num, args.height, args.width, args.seed)).save(args.figure)


if __name__ == "__main__":
    main()

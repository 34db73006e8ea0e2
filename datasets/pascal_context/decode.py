"""Decoding of the PASCAL_MT files into label maps, as Multi-Task-Learning-PyTorch does.

The reference is `data/pascal_context.py::PASCALContext` of
github.com/SimonVandenhende/Multi-Task-Learning-PyTorch (after facebookresearch/astmt).
Each function names the reference method whose output it reproduces; all of them give
the maps at the image's own size, before any of the reference's training transforms
(`AddIgnoreRegions` included, see `README.md`).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

# The context class used for people in the Pascal-Part annotations.
PERSON_CLASS = 15
# Part name -> label for the 6-part setting (`num_human_parts=6`, the reference default):
# 1 head, 2 torso (and neck), 3 upper arms, 4 lower arms and hands, 5 upper legs,
# 6 lower legs and feet; 0 = background.
_PART_GROUPS = {
    1: ("hair", "head", "lear", "lebrow", "leye", "mouth", "nose", "rear", "rebrow", "reye"),
    2: ("neck", "torso"),
    3: ("luarm", "ruarm"),
    4: ("lhand", "llarm", "rhand", "rlarm"),
    5: ("luleg", "ruleg"),
    6: ("lfoot", "llleg", "rfoot", "rlleg"),
}
NUM_HUMAN_PARTS = 6
NUM_SEMSEG_CLASSES = 21
IGNORE = 255

# PASCAL-Context classes (ids of `LabelMap`) whose distilled normals are kept: the classes
# whose name is also an NYU-v2 class, other than "unknown", plus "tvmonitor". Derived from
# the reference's data/db_info/{nyu_classes,context_classes}.json (`normals_valid_classes`).
NORMALS_VALID_CLASSES = (
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46,
    49, 50, 51, 53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95,
    96, 101, 104, 105, 107, 111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157,
    158, 159, 165, 172, 174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219,
    220, 223, 225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261,
    263, 269, 272, 273, 275, 281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304,
    307, 309, 310, 314, 315, 319, 323, 329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355,
    357, 368, 370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405, 407, 408, 411, 412, 413,
    414, 417, 419, 421, 423, 427, 429, 430, 432, 440, 441, 442, 443, 444, 446, 454, 457,
)


def part_label(name: str) -> int:
    """The 6-part label of a Pascal-Part part name; ValueError for an unknown name."""
    for label, names in _PART_GROUPS.items():
        if name in names:
            return label
    known = sorted(n for names in _PART_GROUPS.values() for n in names)
    raise ValueError(f"unknown human part name {name!r}; expected one of {known}")


def read_image(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] as PIL decodes it (reference: `_load_img`, before its float cast)."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def read_png(path: str) -> np.ndarray:
    """The PNG's pixel array as PIL gives it (palette indices for mode "P")."""
    with Image.open(path) as im:
        return np.array(im)


def semseg_from_png(png: np.ndarray) -> np.ndarray:
    """Semantic labels int32 [H, W]: 0..20, 255 = ignore (reference: `_load_semseg`)."""
    return png.astype(np.int32)


def saliency_from_png(png: np.ndarray) -> np.ndarray:
    """Saliency int32 [H, W] in {0, 1}: pixel / 255 > 0.5 (reference: `_load_sal_distilled`)."""
    return (png.astype(np.float32) / 255.0 > 0.5).astype(np.int32)


def normals_from_png(png: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """Distilled normals float32 [H, W, 3] (reference: `_load_normals_distilled`).

    Each channel c -> 2 * c / 255 - 1 (in float32, in that order, so values match the
    reference bit for bit); pixels whose context class is not in NORMALS_VALID_CLASSES are
    all-zero, which marks them invalid.
    """
    normals = 2.0 * png.astype(np.float32) / 255.0 - 1.0
    valid = np.isin(label_map, NORMALS_VALID_CLASSES)
    return np.where(valid[..., None], normals, np.float32(0.0)).astype(np.float32)


def laplacian_nonzero(label_map: np.ndarray) -> np.ndarray:
    """bool [H, W]: where the 4-neighbour Laplacian of the label map is not zero.

    Equals `cv2.Laplacian(label_map, cv2.CV_64F) != 0` (aperture 1: kernel
    [[0, 1, 0], [1, -4, 1], [0, 1, 0]], border reflected without repeating the edge pixel).
    """
    values = label_map.astype(np.float64)
    padded = np.pad(values, 1, mode="reflect")
    neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    return neighbours - 4.0 * values != 0


def _neighbours(skel: np.ndarray) -> list[np.ndarray]:
    """The 8 neighbours x1..x8 of every pixel (E, NE, N, NW, W, SW, S, SE), uint8 {0, 1}."""
    p = np.pad(skel, 1).astype(np.uint8)
    return [p[1:-1, 2:], p[:-2, 2:], p[:-2, 1:-1], p[:-2, :-2],
            p[1:-1, :-2], p[2:, :-2], p[2:, 1:-1], p[2:, 2:]]


def _deletable(skel: np.ndarray, first: bool) -> np.ndarray:
    """Pixels one subiteration of Guo & Hall's algorithm A1 removes (conditions G1-G3)."""
    x = _neighbours(skel)
    # G1: exactly one 4-connected transition around the pixel.
    crossings = sum((1 - x[2 * k]) & (x[2 * k + 1] | x[(2 * k + 2) % 8]) for k in range(4))
    # G2: 2 <= min(n1, n2) <= 3.
    n1 = sum(x[2 * k] | x[2 * k + 1] for k in range(4))
    n2 = sum(x[2 * k + 1] | x[(2 * k + 2) % 8] for k in range(4))
    smaller = np.minimum(n1, n2)
    # G3 (first subiteration) / G3' (second).
    if first:
        g3 = ((x[1] | x[2] | (1 - x[7])) & x[0]) == 0
    else:
        g3 = ((x[5] | x[6] | (1 - x[3])) & x[4]) == 0
    return (crossings == 1) & (smaller >= 2) & (smaller <= 3) & g3


def thin(mask: np.ndarray) -> np.ndarray:
    """Thins a bool [H, W] mask to one-pixel-wide lines; bool [H, W].

    The two-subiteration parallel thinning of Guo & Hall (CACM 1989), repeated until
    nothing changes, pixels outside the image counting as 0. This is the algorithm of
    `skimage.morphology.thin`, which the reference calls; the results are identical.
    """
    skel = np.asarray(mask, dtype=bool).copy()
    while True:
        before = int(skel.sum())
        for first in (True, False):
            skel &= ~_deletable(skel, first)
        if int(skel.sum()) == before:
            return skel


def edges_from_label_map(label_map: np.ndarray) -> np.ndarray:
    """Edges int32 [H, W] in {0, 1}: thinned class boundaries (reference: `_load_edge`)."""
    return thin(laplacian_nonzero(label_map)).astype(np.int32)


def part_objects(mat: dict) -> list:
    """The object records of a Pascal-Part `.mat` (`anno` -> `objects`), possibly empty.

    Fields are read by position as the reference does: 1 = class index, 2 = object mask,
    3 = parts (each part: 0 = name, 1 = mask).
    """
    objects = mat["anno"][0][0][1]
    return list(objects[0]) if objects.size else []


def has_human_parts(objects: list) -> bool:
    """Whether the image counts as showing people (reference: `_preprocess_parts` with
    `area_thres=0`, then `has_human_parts`): some person object with a non-empty mask."""
    return any(
        int(np.asarray(obj[1]).ravel()[0]) == PERSON_CLASS and np.sum(obj[2]) > 0
        for obj in objects
    )


def human_parts_from_objects(objects: list, shape: tuple[int, int]) -> np.ndarray:
    """Human-part labels int32 [H, W], 0..6 (reference: `_load_human_parts`, 6 parts).

    All-zero when the image has no person (`has_human_parts`); otherwise every part of
    every person object is painted in file order, later parts overwriting earlier ones.
    """
    target = np.zeros(shape, dtype=np.int32)
    if not has_human_parts(objects):
        return target
    for obj in objects:
        if int(np.asarray(obj[1]).ravel()[0]) != PERSON_CLASS or len(obj[3]) == 0:
            continue
        for part in (obj[3][0] if obj[3].size else []):
            target[np.asarray(part[1]).astype(bool)] = part_label(str(part[0][0]))
    return target

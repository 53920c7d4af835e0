"""A known-truth image-text preference world: PIL drawings whose questions have one right answer.

Each scene is a white canvas with 2-6 filled shapes (circle, square, triangle) in four colours,
one shape per cell of a 4x4 grid, so shapes never touch. Questions ask what can be read off the
picture: how many shapes of a colour and kind (`count`), the colour of the only shape of a kind
(`colour`), or which half the only shape of a colour and kind is in (`position`). The better
response gives the right answer, the worse a wrong one; response wording and length are drawn
independently of correctness, so neither the text alone nor a length bias can tell them apart.
The right answer needs the image.

`read_scene` recovers every shape from the pixels alone (connected components of each colour,
the kind from how much of its bounding box it fills), so tests check the truth against the
image rather than against the generator's own notes. Flips are injected by
`pipeline.quality.noise.inject_noise`, as for the text world; `ImageWorld.store` writes the
images into a workspace before its pool is written there.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field

from pipeline.images import LoadedImage, store_images, validate_bytes
from pipeline.quality.world import records_table
from pipeline.store import Workspace
from schemas.config.sources import ImagesConfig
from schemas.pair import ImageRef, LabelSource, Message, PairRecord, Role

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (30, 160, 60), "blue": (40, 80, 220), "yellow": (235, 200, 20)}
QUESTIONS = ("count", "colour", "position")
CANVAS, GRID = 128, 4
CELL = CANVAS // GRID
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven")


class ImageWorldConfig(BaseModel):
    """Size, seed and question mix of the image world."""

    model_config = ConfigDict(extra="forbid")

    pairs: int = Field(default=600, ge=1)
    heldout: int = Field(default=200, ge=0)
    seed: int = 0
    gold_share: float = Field(default=0.1, ge=0.0, le=1.0)
    question_mix: dict[str, float] = Field(
        default_factory=lambda: {"count": 0.4, "colour": 0.3, "position": 0.3})
    verifiable_share: float = Field(default=0.5, ge=0.0, le=1.0, description="Share of questions "
                                    "asked as multiple choice with a reference answer in the meta.")
    source: str = "synthetic-image-world"


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    cell: tuple[int, int]  # (column, row) in the grid

    @property
    def side(self) -> str:
        return "left" if self.cell[0] < GRID // 2 else "right"


@dataclass(frozen=True)
class ImageWorld:
    """Clean pairs (stored chosen = right answer), the disjoint held-out set, and their images."""

    pool: list[PairRecord]
    heldout: list[PairRecord]
    images: dict[str, LoadedImage]

    def pool_table(self) -> pa.Table:
        return records_table(self.pool)

    def heldout_table(self) -> pa.Table:
        return records_table(self.heldout)

    def store(self, ws: Workspace) -> int:
        """Write every image of the world into the workspace store (before its pool goes there)."""
        return store_images(ws, self.images.values(), source="synthetic-image-world")


def draw_scene(shapes: list[Shape]) -> Image.Image:
    im = Image.new("RGB", (CANVAS, CANVAS), "white")
    draw = ImageDraw.Draw(im)
    for s in shapes:
        x0, y0 = s.cell[0] * CELL + 5, s.cell[1] * CELL + 5
        x1, y1 = x0 + CELL - 10, y0 + CELL - 10
        fill = COLOURS[s.colour]
        if s.kind == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif s.kind == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        else:
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=fill)
    return im


def read_scene(image: Image.Image) -> list[Shape]:
    """The shapes of a drawing, from its pixels: colour by nearest palette entry, kind by fill ratio."""
    from scipy import ndimage

    pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    found = []
    for name, rgb in COLOURS.items():
        mask = (np.abs(pixels - np.array(rgb)).sum(axis=2) < 60)
        labels, _ = ndimage.label(mask)
        for index, box in enumerate(ndimage.find_objects(labels), 1):
            if box is None:
                continue
            area = int((labels[box] == index).sum())
            height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
            if area < 20:
                continue
            fill = area / (height * width)
            kind = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
            cell = ((box[1].start + width // 2) // CELL, (box[0].start + height // 2) // CELL)
            found.append(Shape(kind, name, cell))
    return sorted(found, key=lambda s: (s.cell[1], s.cell[0]))


def answer(shapes: list[Shape], question: dict[str, str]) -> str:
    """The right answer to a question about a scene (a number word, a colour or a side)."""
    if question["kind"] == "count":
        n = sum(1 for s in shapes if s.kind == question["shape"] and s.colour == question["colour"])
        return _NUMBERS[n]
    if question["kind"] == "colour":
        return next(s.colour for s in shapes if s.kind == question["shape"])
    return next(s.side for s in shapes if s.kind == question["shape"] and s.colour == question["colour"])


def _scene(rng: random.Random) -> list[Shape]:
    cells = rng.sample([(c, r) for c in range(GRID) for r in range(GRID)], rng.randint(2, 6))
    return [Shape(rng.choice(SHAPES), rng.choice(sorted(COLOURS)), cell) for cell in cells]


def _question(rng: random.Random, shapes: list[Shape], kind: str) -> dict[str, str] | None:
    if kind == "count":
        pick = rng.choice(shapes) if rng.random() < 0.8 else Shape(rng.choice(SHAPES), rng.choice(
            sorted(COLOURS)), (0, 0))
        return {"kind": kind, "shape": pick.kind, "colour": pick.colour}
    kinds = [k for k in SHAPES if sum(s.kind == k for s in shapes) == 1]
    if kind == "colour":
        return {"kind": kind, "shape": rng.choice(kinds)} if kinds else None
    unique = [s for s in shapes if sum(t.kind == s.kind and t.colour == s.colour for t in shapes) == 1]
    if not unique:
        return None
    pick = rng.choice(unique)
    return {"kind": kind, "shape": pick.kind, "colour": pick.colour}


def _question_text(q: dict[str, str], rng: random.Random) -> str:
    if q["kind"] == "count":
        return rng.choice(["How many {c} {s}s are in the picture?", "Count the {c} {s}s in the image.",
                           "How many {s}s coloured {c} can you see?"]).format(c=q["colour"], s=q["shape"])
    if q["kind"] == "colour":
        return rng.choice(["What colour is the {s}?", "Which colour does the {s} in the image have?"]
                          ).format(s=q["shape"])
    return rng.choice(["Is the {c} {s} on the left or the right half of the picture?",
                       "Which side of the image is the {c} {s} on, left or right?"]
                      ).format(c=q["colour"], s=q["shape"])


def _wrong(q: dict[str, str], right: str, rng: random.Random) -> str:
    if q["kind"] == "count":
        n = _NUMBERS.index(right)
        return _NUMBERS[rng.choice([m for m in (n - 2, n - 1, n + 1, n + 2) if 0 <= m < len(_NUMBERS)])]
    if q["kind"] == "colour":
        return rng.choice([c for c in sorted(COLOURS) if c != right])
    return "right" if right == "left" else "left"


def _response(q: dict[str, str], value: str, rng: random.Random) -> str:
    """A sentence giving `value`, in a wording (and length) drawn independently of correctness."""
    core = {"count": f"There {'is' if value == 'one' else 'are'} {value}.",
            "colour": f"It is {value}.", "position": f"It is on the {value}."}[q["kind"]]
    lead = rng.choice(["", "Looking at the image, ", "From the picture: ", "Answer: "])
    tail = rng.choice(["", " I checked each shape in the drawing.", " That is what the image shows."])
    return lead + (core[0].lower() + core[1:] if lead and not lead.endswith(": ") else core) + tail


def _options(q: dict[str, str], right: str, wrong: str, rng: random.Random) -> list[str]:
    """The options of a multiple-choice question: the right and the wrong answer among others."""
    if q["kind"] == "position":
        return ["left", "right"]
    pool = sorted(COLOURS) if q["kind"] == "colour" else list(_NUMBERS)
    others = rng.sample([v for v in pool if v not in (right, wrong)], 2)
    options = [right, wrong, *others]
    rng.shuffle(options)
    return options


def _choice_response(value: str, options: list[str], rng: random.Random) -> str:
    """A multiple-choice reply committing to the option of `value`, wording drawn at random."""
    letter = "ABCD"[options.index(value)]
    lead = rng.choice(["", "Looking at the image, the answer is ", "From the picture: ", "Answer: "])
    tail = rng.choice(["", " I checked each shape in the drawing.", " That is what the image shows."])
    return f"{lead}({letter}) {value}.{tail}"


def _as_choice(q: dict[str, str], text: str, right: str, wrong: str, rng: random.Random
               ) -> tuple[str, str, str, dict[str, object]]:
    """The question as multiple choice: its text, both replies and the key a verifier reads."""
    options = _options(q, right, wrong, rng)
    listed = " ".join(f"({'ABCD'[i]}) {o}" for i, o in enumerate(options))
    return (f"{text}\nOptions: {listed}\nAnswer with the letter of the right option.",
            _choice_response(right, options, rng), _choice_response(wrong, options, rng),
            {"options": options, "reference_answer": "ABCD"[options.index(right)],
             "question_type": "multiple-choice"})


def is_verifiable(record: PairRecord) -> bool:
    """Whether the pair ships a reference answer (a multiple-choice key) a rule can check."""
    return "reference_answer" in record.meta


def verifiable_pair_ids(ws: Workspace) -> set[str]:
    """Pool pairs that ship a reference answer (read from their meta, as the verifiers read it)."""
    if not ws.has_table("pool"):
        return set()
    pool = ws.read("pool", columns=["pair_id", "meta"]).to_pylist()
    return {row["pair_id"] for row in pool if "reference_answer" in json.loads(row["meta"] or "{}")}


def generate_image_world(cfg: ImageWorldConfig) -> ImageWorld:
    """The pool, held-out pairs and images of the world with this seed (same seed, same world)."""
    rng = random.Random(cfg.seed)
    # A separate stream for the multiple-choice form: the scenes, questions and free-form replies
    # are the same for every verifiable_share.
    choice_rng = random.Random(f"choice-{cfg.seed}")
    weights = [max(0.0, cfg.question_mix.get(k, 0.0)) for k in QUESTIONS]
    total = cfg.pairs + cfg.heldout
    records: list[PairRecord] = []
    images: dict[str, LoadedImage] = {}
    seen: set[str] = set()
    limits = ImagesConfig()
    attempts = 0
    while len(records) < total:
        attempts += 1
        if attempts > total * 50:
            raise ValueError(f"the image world cannot produce {total} distinct pairs; ask for fewer")
        shapes = _scene(rng)
        q = _question(rng, shapes, rng.choices(QUESTIONS, weights=weights)[0])
        if q is None:
            continue
        buf = io.BytesIO()
        draw_scene(shapes).save(buf, format="PNG")
        img = validate_bytes(buf.getvalue(), limits)
        right = answer(shapes, q)
        wrong = _wrong(q, right, rng)
        text, better, worse = _question_text(q, rng), _response(q, right, rng), _response(q, wrong, rng)
        key: dict[str, object] = {}
        if choice_rng.random() < cfg.verifiable_share:
            text, better, worse, key = _as_choice(q, text, right, wrong, choice_rng)
        ref = ImageRef(uri=img.relpath, sha256=img.sha256, width=img.width, height=img.height,
                       format=img.format)
        record = PairRecord(
            conversation=(Message(role=Role.user, content=text, images=(ref,)),),
            chosen=better, rejected=worse, source=cfg.source, license="CC0-1.0",
            source_id=f"image-world-{cfg.seed}-{len(records)}", label_source=LabelSource.ai,
            meta={"category": q["kind"], "question": q, "truth": right,
                  "scene": [[s.kind, s.colour, *s.cell] for s in shapes], **key})
        if record.pair_id in seen:
            continue
        seen.add(record.pair_id)
        records.append(record)
        images.setdefault(img.sha256, img)
    pool, heldout = records[: cfg.pairs], records[cfg.pairs :]
    gold_at = set(rng.sample(range(len(pool)), round(cfg.gold_share * len(pool))))
    pool = [r.model_copy(update={"label_source": LabelSource.human}) if i in gold_at else r
            for i, r in enumerate(pool)]
    return ImageWorld(pool=pool, heldout=heldout, images=images)

"""A synthetic pairs data set that needs both modalities, plus offline hub modules.

Each post has a *topic*, stated only in its text, and a *stance*, shown only
by its image's dominant colour (warm or cool). The label of a pair follows:

- different topics: NoEntailment;
- same topic, same stance: Implies;
- same topic, opposite stance: Contradictory.

A text-only model can tell NoEntailment from the rest but not Implies from
Contradictory; an image-only model cannot see topics at all. The class mix is
the real data set's (84% NoEntailment). Images are JPEG and PNG of mixed sizes;
ids are 19-digit integers; texts carry emoji, URLs and newlines, like tweets.

Example:
    assets = prepare_demo("~/.cache/mmentail/demo", num_pairs=300)
    assets.csv_path, assets.image_dir, assets.preprocess_dir, assets.encoder_dir
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mmentail.io_utils import atomic_directory
from mmentail.schema import COLUMNS, LABELS

log = logging.getLogger(__name__)

# The real data set's class mix: 109 Contradictory, 109 Implies, 1182 NoEntailment.
REAL_CLASS_MIX = {"Contradictory": 109 / 1400, "Implies": 109 / 1400, "NoEntailment": 1182 / 1400}

TOPICS = {
    "flood": ["the river flood downtown", "flood waters near the bridge",
              "the flood warning for the valley"],
    "election": ["the election count tonight", "polling stations for the election",
                 "the election recount"],
    "vaccine": ["the vaccine rollout", "vaccine doses for seniors", "the new vaccine centre"],
    "wildfire": ["the wildfire on the ridge", "wildfire smoke over town",
                 "the wildfire evacuation"],
    "concert": ["the stadium concert", "concert tickets for saturday", "the concert lineup"],
    "football": ["the football final", "football fans at the stadium", "the football transfer"],
    "rocket": ["the rocket launch", "rocket engines on the pad", "the rocket landing"],
    "market": ["the stock market open", "market prices this morning", "the market rally"],
}
OPENERS = ["Breaking:", "Update on", "Just in:", "Thread about", "Photos of", "Live:",
           "Reports on"]
CLOSERS = ["", "Stay safe", "More soon", "Retweet please", "What do you think?", "#news",
           "#update"]
# Texts of posts that do not say their topic: whether two such posts are about
# the same thing is as uncertain from the text as it often is on real posts.
VAGUE_PHRASES = ["what is going on here", "everyone is talking about this",
                 "you have to see this", "huge crowds right now",
                 "this changes everything", "can't believe what happened today"]
EMOJI = ["", " 🔥", " 🙏", " 📢", " ⚡", " 🌍"]
STANCE_COLOURS = {"warm": (205, 60, 40), "cool": (40, 80, 205)}


@dataclasses.dataclass(frozen=True)
class DemoAssets:
    """Paths of a prepared demo: data, and hub modules built for its vocabulary."""

    csv_path: Path
    image_dir: Path
    preprocess_dir: Path
    encoder_dir: Path


def _post_text(rng: np.random.Generator, topic: str, vague_fraction: float = 0.0) -> str:
    if vague_fraction and rng.random() < vague_fraction:
        text = f"{rng.choice(OPENERS)} {rng.choice(VAGUE_PHRASES)}{rng.choice(EMOJI)}"
    else:
        phrase = rng.choice(TOPICS[topic])
        text = f"{rng.choice(OPENERS)} {phrase} #{topic}{rng.choice(EMOJI)}"
    closer = rng.choice(CLOSERS)
    if closer:
        text += ("\n\n" if rng.random() < 0.3 else " ") + closer
    if rng.random() < 0.3:
        text += f" https://t.co/{''.join(rng.choice(list('abcdefXYZ0123'), 6))}"
    return text


def _post_image(rng: np.random.Generator, stance: str, size_range: tuple[int, int],
                aspect_ratio: float | None = None) -> Image.Image:
    if aspect_ratio:
        width = int(rng.integers(size_range[0], size_range[1] + 1))
        height = max(1, round(width / aspect_ratio))
    else:
        width, height = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    base = np.array(STANCE_COLOURS[stance], dtype=np.float32)
    pixels = base + rng.normal(0, 12, size=(height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 3))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(2, max(3, width // 5))), int(rng.integers(2, max(3, height // 5)))
        grey = int(rng.integers(60, 220))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0, y0, x0 + w, y0 + h], fill=(grey, grey, grey))
    return image


def _pair_posts(rng: np.random.Generator, label: str,
                topics: list[str]) -> tuple[tuple[str, str], tuple[str, str]]:
    """(topic, stance) of the two posts of a pair with `label`: the rule the demo encodes."""
    topic_1 = rng.choice(topics)
    stance_1 = rng.choice(["warm", "cool"])
    if label == "NoEntailment":
        return (topic_1, stance_1), (rng.choice([t for t in topics if t != topic_1]),
                                     rng.choice(["warm", "cool"]))
    opposite = "cool" if stance_1 == "warm" else "warm"
    return (topic_1, stance_1), (topic_1, stance_1 if label == "Implies" else opposite)


def generate_demo_dataset(out_dir: str | Path, num_pairs: int = 1000, seed: int = 0,
                          image_size_range: tuple[int, int] = (48, 160),
                          png_fraction: float = 0.15, num_topics: int = 3,
                          aspect_ratio: float | None = None,
                          vague_fraction: float = 0.0) -> tuple[Path, Path]:
    """Writes `pairs.csv` and `images/` under `out_dir`; returns their paths.

    Deterministic for a given `seed` and arguments.

    Args:
        out_dir: folder to create (replaced atomically if it exists).
        num_pairs: rows to write.
        seed: random seed.
        image_size_range: min and max side of the images, in pixels.
        png_fraction: share of images written as PNG (the rest are JPEG).
        num_topics: how many of :data:`TOPICS` the posts talk about; fewer
            topics make the pair relation easier to learn from few rows.
        aspect_ratio: width / height of every image, its width drawn from
            `image_size_range`; None draws width and height independently.
            (1200, 1200) with 16 / 9 gives the 1200x675 of typical post photos.
        vague_fraction: share of posts whose text does not name their topic.
            A pair with such a post cannot be labelled with certainty, which
            is where the class-imbalance remedies have something to trade.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    topics = sorted(TOPICS)[:num_topics]
    labels = rng.choice(LABELS, size=num_pairs, p=[REAL_CLASS_MIX[label] for label in LABELS])
    used_ids: set[int] = set()

    def new_id() -> str:
        while True:
            post_id = int(rng.integers(10**18, 10**19 - 1, dtype=np.uint64))
            if post_id not in used_ids:
                used_ids.add(post_id)
                return str(post_id)

    rows = []
    with atomic_directory(out_dir) as tmp:
        image_dir = tmp / "images"
        image_dir.mkdir()
        for label in labels:
            row = {}
            for side, (topic, stance) in enumerate(_pair_posts(rng, label, topics), start=1):
                post_id = new_id()
                ext = "png" if rng.random() < png_fraction else "jpg"
                image = _post_image(rng, stance, image_size_range, aspect_ratio)
                if ext == "png":
                    image.save(image_dir / f"{post_id}.png", format="PNG")
                else:
                    image.save(image_dir / f"{post_id}.jpg", format="JPEG", quality=90)
                row[f"id_{side}"] = post_id
                row[f"text_{side}"] = _post_text(rng, topic, vague_fraction)
                row[f"image_{side}"] = f"https://example.org/media/{post_id}.{ext}"
            row["label"] = str(label)
            rows.append(row)
        pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(tmp / "pairs.csv", index=False)
    return out_dir / "pairs.csv", out_dir / "images"


def prepare_demo(cache_dir: str | Path, num_pairs: int = 1000, seed: int = 0,
                 image_size_range: tuple[int, int] = (48, 160), num_topics: int = 3,
                 aspect_ratio: float | None = None, vague_fraction: float = 0.0) -> DemoAssets:
    """Generates the demo data and its hub modules into `cache_dir` unless present.

    The WordPiece vocab is learned from the demo texts; the encoder is a small
    randomly initialised BERT. Image options are those of
    :func:`generate_demo_dataset`. A `manifest.json` records the arguments, so a
    request with other arguments rebuilds instead of reusing stale files.
    """
    from mmentail.io_utils import atomic_write_json
    from mmentail.text.hub_modules import (
        build_preprocessor,
        build_random_encoder,
        learn_wordpiece_vocab,
        write_vocab,
    )

    cache_dir = Path(cache_dir).expanduser()
    manifest = {"num_pairs": num_pairs, "seed": seed,
                "image_size_range": list(image_size_range), "num_topics": num_topics,
                "aspect_ratio": aspect_ratio, "vague_fraction": vague_fraction,
                "version": 2}
    assets = DemoAssets(cache_dir / "data" / "pairs.csv", cache_dir / "data" / "images",
                        cache_dir / "preprocess", cache_dir / "encoder")
    manifest_path = cache_dir / "manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest and all(
            p.exists() for p in dataclasses.astuple(assets)):
        return assets

    log.info("generating %d demo pairs in %s", num_pairs, cache_dir)
    manifest_path.unlink(missing_ok=True)
    csv_path, _ = generate_demo_dataset(cache_dir / "data", num_pairs, seed, image_size_range,
                                        num_topics=num_topics, aspect_ratio=aspect_ratio,
                                        vague_fraction=vague_fraction)
    import pandas as pd

    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    log.info("learning a WordPiece vocab and building hub modules")
    vocab = learn_wordpiece_vocab(list(df["text_1"]) + list(df["text_2"]), vocab_size=1000)
    vocab_path = cache_dir / "vocab.txt"
    write_vocab(vocab, vocab_path)
    build_preprocessor(vocab_path, assets.preprocess_dir)
    build_random_encoder(len(vocab), assets.encoder_dir, seed=seed)
    atomic_write_json(manifest_path, manifest)
    return assets

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from mmentail.data.pairs import read_pairs
from mmentail.data.split import label_counts
from mmentail.sources.demo import (
    STANCE_COLOURS,
    TOPICS,
    VAGUE_PHRASES,
    generate_demo_dataset,
)


def _topic(text: str) -> str:
    found = [topic for topic in TOPICS if topic in text]
    assert len(found) == 1, text
    return found[0]


def _stance(path: str) -> str:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    mean = pixels.reshape(-1, 3).mean(0)
    return min(STANCE_COLOURS, key=lambda s: np.abs(mean - STANCE_COLOURS[s]).sum())


def test_labels_follow_from_both_modalities(tmp_path):
    csv_path, image_dir = generate_demo_dataset(tmp_path / "d", num_pairs=120, seed=5)
    df = read_pairs(csv_path, image_dir)
    for row in df.itertuples():
        same_topic = _topic(row.text_1) == _topic(row.text_2)
        same_stance = _stance(row.image_1_path) == _stance(row.image_2_path)
        expected = ("NoEntailment" if not same_topic
                    else "Implies" if same_stance else "Contradictory")
        assert row.label == expected


def test_vague_posts_hide_their_topic_and_keep_the_rule(tmp_path):
    csv_path, image_dir = generate_demo_dataset(tmp_path / "d", num_pairs=200, seed=5,
                                                image_size_range=(8, 12), vague_fraction=0.3)
    df = read_pairs(csv_path, image_dir)
    texts = pd.concat([df["text_1"], df["text_2"]])
    vague = texts[~texts.apply(lambda t: any(topic in t for topic in TOPICS))]
    assert 0.2 < len(vague) / len(texts) < 0.4
    topic_words = {word for phrases in TOPICS.values() for p in phrases for word in p.split()}
    topic_words -= {"the", "for", "of", "on", "at", "over", "near", "new", "this"}
    assert all(any(p in t for p in VAGUE_PHRASES) for t in vague)
    assert not {word for t in vague for word in t.split()} & topic_words
    for row in df.itertuples():  # pairs whose texts say their topics follow the rule
        if all(any(topic in t for topic in TOPICS) for t in (row.text_1, row.text_2)):
            same_topic = _topic(row.text_1) == _topic(row.text_2)
            same_stance = _stance(row.image_1_path) == _stance(row.image_2_path)
            assert row.label == ("NoEntailment" if not same_topic
                                 else "Implies" if same_stance else "Contradictory")


def test_deterministic_mixed_formats_and_real_class_mix(tmp_path):
    a, images = generate_demo_dataset(tmp_path / "a", num_pairs=300, seed=1)
    b, _ = generate_demo_dataset(tmp_path / "b", num_pairs=300, seed=1)
    c, _ = generate_demo_dataset(tmp_path / "c", num_pairs=300, seed=2)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    df = pd.read_csv(a, dtype=str)
    assert all(len(i) == 19 for i in df["id_1"])
    counts = label_counts(df)
    assert 0.78 < counts["NoEntailment"] / 300 < 0.90
    assert counts["Implies"] > 0 and counts["Contradictory"] > 0
    suffixes = {p.suffix for p in images.iterdir()}
    assert suffixes == {".jpg", ".png"}
    sizes = {Image.open(p).size for p in list(images.iterdir())[:40]}
    assert len(sizes) > 10


def test_aspect_ratio_gives_photo_sized_images(tmp_path):
    csv_path, image_dir = generate_demo_dataset(tmp_path / "d", num_pairs=6, seed=2,
                                                image_size_range=(320, 320),
                                                aspect_ratio=16 / 9)
    sizes = {Image.open(path).size for path in image_dir.iterdir()}
    assert sizes == {(320, 180)}

"""Download of the real Multimodal Entailment data set (CSV + image archive).

The URLs are the ones the keras.io example uses. Files are cached, so only the
first run downloads; `tf_keras.utils.get_file` shows a progress bar.
"""

from __future__ import annotations

from pathlib import Path

import tf_keras

DATASET_CSV_URL = (
    "https://github.com/sayakpaul/Multimodal-Entailment-Baseline/raw/main/csvs/tweets.csv")
DATASET_IMAGES_URL = (
    "https://github.com/sayakpaul/Multimodal-Entailment-Baseline/releases/download/"
    "v1.0.0/tweet_images.tar.gz")


def download_dataset(cache_dir: str | Path, csv_url: str = DATASET_CSV_URL,
                     images_url: str = DATASET_IMAGES_URL) -> tuple[Path, Path]:
    """Fetches the pairs CSV and extracts the images; returns (csv_path, image_dir)."""
    cache_dir = Path(cache_dir).expanduser() / "datasets"
    cache_dir.mkdir(parents=True, exist_ok=True)
    csv_path = tf_keras.utils.get_file("multimodal_entailment_tweets.csv", csv_url,
                                       cache_dir=str(cache_dir), cache_subdir="")
    tf_keras.utils.get_file("tweet_images.tar.gz", images_url, cache_dir=str(cache_dir),
                            cache_subdir="", extract=True)
    return Path(csv_path), cache_dir / "tweet_images"

"""The callback title derived from the video URL."""

import pytest

from jobs.titles import title_from_video_url


@pytest.mark.parametrize(
    ("url", "title"),
    [
        ("https://cdn.pika.art/v1/0d6c6c50-4f6e/Plane_fly_seed3183047765.mp4", "Plane fly"),
        ("https://cdn.pika.art/v1/x/a_cat,_sitting_seed1.mp4", "A cat"),
        ("https://cdn.pika.art/v1/x/BIG_Dog.mp4", "Big dog"),
        ("https://cdn.pika.art/v1/x/sunset%20over_sea_seed42.mp4?token=abc", "Sunset over sea"),
        ("https://cdn.pika.art/v1/x/seeded_seed_words.mp4", "Seeded seed words"),
        ("https://cdn.pika.art/v1/x/video.webm", "Generated Video"),
        ("https://cdn.pika.art/v1/x/", "Generated Video"),
        ("", "Generated Video"),
    ],
)
def test_title_from_video_url(url: str, title: str) -> None:
    assert title_from_video_url(url) == title

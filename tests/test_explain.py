"""Explanations by occlusion: scores on a model whose reasons are known, `mmentail-explain`,
the server's `:explain`, and the deletion test."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from test_server import GOOD, _b64, _call, _columns, _instance, _start, _stop

from helpers import load_tool, random_image_bytes, save_image, write_csv
from mmentail.schema import COLUMNS, LABELS
from mmentail.serving.explain import (
    MAX_SIDE,
    UnreadableImage,
    decode_rgb,
    explain_pairs,
    main,
    split_words,
)
from mmentail.serving.server import ModelServer


def _quarter_red(size: int = 40) -> bytes:
    """An image whose top-left quarter is red and the rest blue."""
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[:] = (40, 80, 205)
    pixels[:size // 2, :size // 2] = (205, 60, 40)
    return save_image(Image.fromarray(pixels))


def _red_share_top_left(data: bytes) -> float:
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), int)
    quarter = pixels[:pixels.shape[0] // 2, :pixels.shape[1] // 2]
    return float(((quarter[..., 0] > 150) & (quarter[..., 2] < 100)).mean())


class KnownModel:
    """A model whose reasons are known: p(Implies) = 0.1, + 0.5 when text 1 has the word
    "flood", + 0.3 x the red share of image 2's top-left quarter. Records its calls."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, columns):
        self.calls.append(len(columns["text_1"]))
        p = np.asarray([0.1 + 0.5 * (b"flood" in text.split())
                        + 0.3 * (_red_share_top_left(image) if image else 0.0)
                        for text, image in zip(columns["text_1"], columns["image_2"])])
        probabilities = np.stack([(1 - p) / 2, p, (1 - p) / 2], axis=1)
        return {"probabilities": probabilities, "logits": np.log(probabilities),
                "label": np.asarray(LABELS)[probabilities.argmax(axis=1)]}


PAIR = {"text_1": [b"Breaking: the river\n\nflood  downtown"], "image_1": [random_image_bytes(3)],
        "text_2": [b"Update on the warning"], "image_2": [_quarter_red()]}


def test_scores_single_out_the_words_cells_and_parts_a_model_reads():
    model = KnownModel()
    [why] = explain_pairs(model, PAIR, max_batch=16)
    assert why.label == "Implies" and why.label_probability == pytest.approx(0.9)
    assert why.words["text_1"] == ["Breaking:", "the", "river", "flood", "downtown"]
    np.testing.assert_allclose(why.word_scores["text_1"], [0, 0, 0, 0.5, 0], atol=1e-6)
    np.testing.assert_allclose(why.word_scores["text_2"], 0, atol=1e-6)
    expected_cells = np.zeros((4, 4))
    expected_cells[:2, :2] = 0.3 / 4  # each cell is a quarter of the red quarter
    np.testing.assert_allclose(why.cell_scores["image_2"], expected_cells, atol=1e-6)
    np.testing.assert_allclose(why.cell_scores["image_1"], 0, atol=1e-6)
    assert why.modalities == pytest.approx({"text_1": 0.4, "text_2": 0.9, "texts": 0.4,
                                            "image_1": 0.9, "image_2": 0.6, "images": 0.6})
    # The pair first, then every variant in one batched call, in chunks of max_batch.
    assert why.variants == 1 + 6 + 9 + 2 * (16 + 1)
    assert model.calls[0] == 1 and sum(model.calls[1:]) == why.variants - 1
    assert max(model.calls) <= 16 and len(model.calls) == 1 + -(-(why.variants - 1) // 16)
    saved = why.to_json()
    assert json.loads(json.dumps(saved)) == saved
    assert saved["modalities"]["text_1"] == pytest.approx({"probability": 0.4, "drop": 0.5})
    assert saved["words"]["text_1"][3] == {"word": "flood", "score": pytest.approx(0.5)}


def test_scores_measure_the_models_own_probability_not_the_calibrated_one():
    """An export whose calibration flattens Implies to near its bias (as a vector map
    fitted on the real texts does): the scores are still the model's drops, and the
    calibrated probabilities are what the explanation reports beside them."""
    model = KnownModel()

    def calibrated(columns):
        outputs = model(columns)
        scores = outputs["logits"] * np.array([1.0, 0.05, 1.0]) + np.array([0, -3.0, 1.0])
        flat = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
        return {**outputs, "probabilities": flat}

    [why] = explain_pairs(calibrated, PAIR, max_batch=64)
    [plain] = explain_pairs(model, PAIR, max_batch=64)
    assert why.label == "Implies" and why.probabilities.argmax() != LABELS.index("Implies")
    np.testing.assert_allclose(why.model_probabilities, [0.05, 0.9, 0.05], atol=1e-6)
    assert why.label_probability == pytest.approx(0.9)
    for name in why.word_scores:
        np.testing.assert_allclose(why.word_scores[name], plain.word_scores[name], atol=1e-6)
    np.testing.assert_allclose(why.cell_scores["image_2"], plain.cell_scores["image_2"],
                               atol=1e-6)
    saved = why.to_json()
    assert saved["probabilities"]["Implies"] == pytest.approx(float(why.probabilities[1]))
    assert saved["model_probabilities"]["Implies"] == pytest.approx(0.9)


def test_images_are_read_as_the_export_reads_them_and_large_ones_reduced():
    rgba = np.zeros((1024, 2048, 4), np.uint8)
    rgba[..., 0], rgba[:, :1024, 3] = 200, 255  # the right half transparent
    pixels = decode_rgb(save_image(Image.fromarray(rgba, "RGBA")), max_side=MAX_SIDE)
    assert pixels.shape == (512, 1024, 3)
    assert tuple(pixels[10, 10]) == (200, 0, 0) and tuple(pixels[10, -10]) == (255, 255, 255)
    with pytest.raises(UnreadableImage, match=r"image_2\[3\]: the image cannot be read"):
        decode_rgb(b"\x89PNG\r\n\x1a\nbroken", "image_2[3]")


@pytest.mark.parametrize("modality", ["text", "image"])
def test_an_export_of_one_modality_has_only_that_one_varied(modality):
    model = KnownModel()
    pair = {**PAIR, "image_1": [b""], "image_2": [b""]} if modality == "text" else PAIR
    [why] = explain_pairs(model, pair, modality=modality, grid=(2, 3))
    assert set(why.modalities) == ({"text_1", "text_2", "texts"} if modality == "text"
                                   else {"image_1", "image_2", "images"})
    assert bool(why.words) == (modality == "text") and bool(why.images) == (modality != "text")
    if modality == "image":
        assert why.cell_scores["image_2"].shape == (2, 3)
    assert why.variants == (1 + 3 + 9 if modality == "text" else 1 + 3 + 2 * (6 + 1))


@pytest.fixture(scope="module")
def server(export):
    server = _start(ModelServer(("127.0.0.1", 0), export))
    yield server
    _stop(server)


def test_words_rejoined_read_as_the_original_text(export):
    texts = ["Breaking:\tthe river\n\nflood   downtown 🔥", "  Update on the  warning\n"]
    pair = {"image_1": [random_image_bytes(4)] * 2, "image_2": [random_image_bytes(5)] * 2}
    original = export.predict({**pair, "text_1": [t.encode() for t in texts],
                               "text_2": [texts[1].encode(), texts[0].encode()]})
    rejoined = [" ".join(split_words(t)).encode() for t in texts]
    joined = export.predict({**pair, "text_1": rejoined, "text_2": rejoined[::-1]})
    np.testing.assert_allclose(joined["probabilities"], original["probabilities"], atol=1e-6)


@pytest.mark.slow
def test_command_and_server_give_the_same_explanations(export, server, exported, demo, demo_pairs,
                                                       tmp_path, monkeypatch, capsys):
    """`mmentail-explain` writes each row's JSON and picture; `:explain` answers the same
    pairs the same, in the row and the columnar format, beside `:predict`'s answer."""
    from mmentail.serving import explain

    monkeypatch.setattr("mmentail.serving.loaded.load_export", lambda path: export)
    rows = demo_pairs[list(COLUMNS)].iloc[:3].to_dict("records")
    csv_path = write_csv(tmp_path / "pairs.csv", rows)
    out = tmp_path / "why"
    assert explain.main([str(exported[1]), "--data-csv", str(csv_path), "--image-dir",
                         str(demo.image_dir), "--rows", "1", "3", "--output", str(out)]) == 0
    assert "row 3: " in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["1.json", "1.png", "3.json", "3.png"]
    written = {row: json.loads((out / f"{row}.json").read_text()) for row in (1, 3)}
    with Image.open(out / "1.png") as picture:
        assert picture.format == "PNG" and picture.width >= 800
    for row, saved in written.items():
        assert (saved["row"], saved["id_1"]) == (row, rows[row - 1]["id_1"])
        assert saved["true_label"] == rows[row - 1]["label"] and saved["grid"] == [4, 4]
        assert [w["word"] for w in saved["words"]["text_2"]] == rows[row - 1]["text_2"].split()
        assert np.shape(saved["cells"]["image_1"]) == (4, 4)

    pairs = [{"text_1": pair["text_1"], "text_2": pair["text_2"],
              "image_1": open(pair["image_1_path"], "rb").read(),
              "image_2": open(pair["image_2_path"], "rb").read()}
             for pair in (demo_pairs.iloc[0], demo_pairs.iloc[2])]
    by_rows = _call(server, "POST", ":explain", {"instances": [_instance(p) for p in pairs]})
    by_columns = _call(server, "POST", ":explain", {"inputs": _columns(pairs)})
    predicted = _call(server, "POST", ":predict", {"instances": [_instance(p) for p in pairs]})
    assert by_rows[0] == by_columns[0] == predicted[0] == 200
    rows_answer, columns_answer = by_rows[1], by_columns[1]
    assert set(rows_answer) == {"predictions", "explanations"}
    assert set(columns_answer) == {"outputs", "explanations"}
    for got, prediction in zip(rows_answer["predictions"], predicted[1]["predictions"]):
        assert got["label"] == prediction["label"]
        np.testing.assert_allclose(got["probabilities"], prediction["probabilities"],
                                   atol=1e-5)
    for served in (rows_answer["explanations"], columns_answer["explanations"]):
        for got, row in zip(served, (1, 3)):
            saved = {k: v for k, v in written[row].items()
                     if k not in ("row", "id_1", "id_2", "true_label")}
            _assert_same(got, saved)


def _assert_same(got, expected) -> None:
    """Equal JSON, numbers to float32 rounding (the batches differ)."""
    if isinstance(expected, dict):
        assert set(got) == set(expected)
        for key in expected:
            _assert_same(got[key], expected[key])
    elif isinstance(expected, list):
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            _assert_same(a, b)
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=1e-5)
    else:
        assert got == expected


@pytest.mark.parametrize("body", [
    b"{not json",
    {"instances": [{k: v for k, v in GOOD.items() if k != "image_2"}]},
    {"instances": [{**GOOD, "text_1": 3}]},
    {"instances": [GOOD, {**GOOD, "image_2": {"b64": "not*base64"}}]},
    {"instances": [{**GOOD, "image_2": _b64(b"<html>not found</html>")}]},
    {"inputs": {**_columns([{"text_1": "a", "image_1": b"", "text_2": "b", "image_2": b""}]),
                "text_1": "one text"}},
])
def test_explain_refuses_bad_requests_as_predict_does(server, body):
    refused = [_call(server, "POST", verb, body) for verb in (":predict", ":explain")]
    assert refused[0] == refused[1] and refused[0][0] == 400, refused
    assert _call(server, "GET", ":explain")[0] == 405
    assert _call(server, "POST", ":explain", {"instances": [GOOD]})[0] == 200


def test_rows_not_in_the_csv_or_invalid_are_named(demo, demo_pairs, tmp_path, capsys):
    rows = demo_pairs[list(COLUMNS)].iloc[:2].to_dict("records")
    rows[1] = {**rows[1], "text_1": " "}
    csv_path = write_csv(tmp_path / "pairs.csv", rows)
    assert main(["missing-export", "--data-csv", str(csv_path), "--rows", "1",
                 "--output", str(tmp_path / "out")]) == 1
    assert "no saved_model.pb" in capsys.readouterr().err
    export_dir = tmp_path / "export"
    (export_dir / "assets.extra").mkdir(parents=True)
    (export_dir / "saved_model.pb").write_bytes(_empty_saved_model())
    assert main([str(export_dir), "--data-csv", str(csv_path), "--image-dir",
                 str(demo.image_dir), "--rows", "0", "2", "3", "--output",
                 str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "row 0: there is no such row" in error and "row 3: there is no such row" in error
    assert "row 2 (ids" in error and "text_1" in error
    assert not (tmp_path / "out").exists()


def _empty_saved_model() -> bytes:
    """A saved_model.pb with a `serving_default` signature and nothing to run: enough for
    the command to read the export's description and check its rows."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    graph = saved_model.meta_graphs.add()
    graph.meta_info_def.tags.append("serve")
    graph.signature_def["serving_default"].method_name = "tensorflow/serving/predict"
    return saved_model.SerializeToString()


def test_deletion_test_finds_the_known_reasons_faster_than_random():
    tool = load_tool("deletion_test")
    model = KnownModel()
    [why] = explain_pairs(model, PAIR)
    pair = {name: values[0] for name, values in PAIR.items()}
    result = tool.pair_deletion(model, pair, why, np.random.default_rng(0), random_orders=3,
                                topic_words={"flood", "river"})
    # "flood" first: p(Implies) falls from 0.9 to 0.4 at the first of 9 words.
    assert result["words"]["explanation"] == pytest.approx(
        tool.area(np.array([0.9] + [0.4] * 9)))
    assert result["words"]["explanation"] < result["words"]["random"]
    assert result["words"]["topic_first"] < result["words"]["random"]
    assert result["cells"]["explanation"] < result["cells"]["random"]
    assert result["topic_precision"] == 0.5  # of the top two words, "flood" is a topic word
    summary = tool.summarise([result, result])
    assert summary["words"]["share_explanation_faster_than_random"] == 1.0
    assert summary["mean_topic_precision"] == 0.5
    assert summary["mean_drop_without"]["text_1"] == pytest.approx(0.5)
    assert summary["top_cell_counts"] == {"image_2:0": 2}  # top-left, in the red quarter

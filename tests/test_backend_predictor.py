"""The predictor behind /predict: result contents, batching, caching, no segmenter."""

from __future__ import annotations

import logging
import os

import numpy as np
from backend_support import CLASSES, make_backend, task, two_tone, write_png
from label_studio_sdk.label_interface import LabelInterface

from robustar_ls.backend.build import build_predictor
from robustar_ls.backend.limits import RequestLimits
from robustar_ls.backend.predictor import STAGES, PredictorSettings
from robustar_ls.config import MaskRCNNConfig, ServeConfig
from robustar_ls.labelstudio.brush import rle_to_mask
from robustar_ls.labelstudio.config import default_label_config


def regions(prediction, label):
    return [
        r
        for r in prediction["result"]
        if r["type"] == "brushlabels" and r["value"]["brushlabels"] == [label]
    ]


def summary(prediction):
    return next(r for r in prediction["result"] if r["type"] == "textarea")["value"]["text"][0]


def test_predictions_validate_against_the_sdk(tmp_path):
    backend = make_backend(tmp_path)
    predictions = backend.predictor.predict([task("ds/train/circle/c0.png")])
    interface = LabelInterface(default_label_config())
    ok = interface.validate_prediction(predictions[0], return_errors=True)
    assert ok == [], ok


def test_summary_names_prediction_truth_and_verdict(tmp_path):
    backend = make_backend(tmp_path)
    preds = backend.predictor.predict(
        [
            task("ds/train/circle/c0.png", 1),
            task("ds/test/triangle/t0.png", 2),
            task("ds/train/circle/c0.png", 3, true_class="square"),
            {"id": 4, "data": {"image": str(backend.root / "ds/train/circle/c0.png")}},
        ]
    )
    texts = [summary(p) for p in preds]
    predicted = texts[0].split("Predicted: ")[1].split(" (")[0]
    assert predicted in CLASSES
    assert f"({preds[0]['score']:.2f})" in texts[0]
    verdict = "correct" if predicted == "circle" else "WRONG"
    assert texts[0].endswith(f"True: circle · {verdict} · Spurious: Mask R-CNN")
    assert "True: triangle" in texts[1]  # from the test/<class>/ folder
    assert "True: square" in texts[2]  # task data wins over the folder
    assert "True: circle" in texts[3]  # an absolute path under the root


def test_attention_region_is_the_top_fraction_at_original_size(tmp_path):
    backend = make_backend(tmp_path)
    pred = backend.predictor.predict([task("ds/train/circle/c0.png")])[0]
    (attention,) = regions(pred, "Model attention")
    mask = rle_to_mask(attention["value"]["rle"], 16, 24)
    top = backend.cfg.top_fraction
    assert 0 < (mask > 0).sum() <= np.ceil(top * 16 * 24) + 24  # ties may add a few
    assert mask.max() == 255  # graded: the peak is opaque


def test_all_tasks_go_through_the_models_in_batches(tmp_path):
    images = {f"ds/train/circle/{i}.png": two_tone() for i in range(5)}
    backend = make_backend(tmp_path, batch_size=2, images=images)
    sizes = []
    model = backend.predictor.holder.current().model
    handle = model.register_forward_hook(lambda m, inputs, out: sizes.append(len(inputs[0])))
    try:
        preds = backend.predictor.predict([task(f"ds/train/circle/{i}.png", i) for i in range(5)])
    finally:
        handle.remove()
    assert len(preds) == 5 and all(p["result"] for p in preds)
    # classifier and saliency each see the batches [2, 2, 1]
    assert sorted(sizes) == [1, 1, 2, 2, 2, 2]
    assert backend.detector.calls == [2, 2, 1]


def test_model_outputs_are_cached_per_version_and_image_content(tmp_path):
    backend = make_backend(tmp_path)
    tasks = [task("ds/train/circle/c0.png")]
    first = backend.predictor.predict(tasks)
    calls = list(backend.detector.calls)
    second = backend.predictor.predict(tasks)
    assert backend.detector.calls == calls  # no model call for a cached image
    assert first[0]["result"][1]["value"] == second[0]["result"][1]["value"]
    path = backend.root / "ds/train/circle/c0.png"
    write_png(path, two_tone(24, 16, (0, 0, 6, 6)))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    third = backend.predictor.predict(tasks)
    assert len(backend.detector.calls) == len(calls) + 1  # the changed file is recomputed
    assert regions(third[0], "Spurious") != regions(first[0], "Spurious")


def test_duplicate_tasks_in_one_call(tmp_path):
    backend = make_backend(tmp_path)
    preds = backend.predictor.predict([task("ds/train/circle/c0.png", i) for i in range(3)])
    assert len({p["score"] for p in preds}) == 1 and all(p["result"] for p in preds)


def test_timing_is_off_by_default_and_splits_stages_when_on(tmp_path):
    backend = make_backend(tmp_path / "a")
    assert backend.predictor.timer.seconds is None
    timing: dict[str, float] = {}
    timed = make_backend(tmp_path / "b", timing=timing)
    timed.predictor.predict([task("ds/train/circle/c0.png")])
    assert set(timing) == set(STAGES) and all(v > 0 for v in timing.values())


def test_no_segmenter_weights_serves_the_rest_and_says_so_once(tmp_path, caplog):
    backend = make_backend(tmp_path)  # for the files
    cfg = ServeConfig(
        checkpoint=str(backend.checkpoint),
        document_root=str(backend.root),
        maskrcnn=MaskRCNNConfig(weights=str(tmp_path / "no-such-maskrcnn.pth")),
        cache_dir=str(tmp_path / "cache2"),
        device="cpu",
    )
    with caplog.at_level(logging.WARNING):
        predictor = build_predictor(cfg)
        preds = predictor.predict([task("ds/train/circle/c0.png", i) for i in range(3)])
        predictor.predict([task("ds/train/square/s0.png")])
    messages = [r.getMessage() for r in caplog.records if "segmenter" in r.getMessage()]
    assert len(messages) == 1 and "no-such-maskrcnn.pth" in messages[0]
    assert predictor.segmenter is None
    for pred in preds:
        labels = [r["value"]["brushlabels"] for r in pred["result"] if r["type"] == "brushlabels"]
        assert labels == [["Model attention"]]
        assert summary(pred).startswith("Predicted: ")


def test_segmenter_can_be_switched_off(tmp_path, caplog):
    backend = make_backend(tmp_path)
    cfg = ServeConfig(
        checkpoint=str(backend.checkpoint),
        use_maskrcnn=False,
        device="cpu",
        cache_dir=str(tmp_path / "c"),
    )
    with caplog.at_level("WARNING", logger="robustar_ls.backend.predictor"):
        predictor = build_predictor(cfg)
    assert predictor.segmenter is None
    assert "no Mask R-CNN segmenter" in caplog.text and "disabled" in caplog.text


def test_one_image_failing_in_the_models_does_not_fail_its_batch(tmp_path, monkeypatch):
    backend = make_backend(tmp_path, batch_size=4)
    segmenter = backend.predictor.segmenter
    original = segmenter.spurious_masks

    def flaky(images):
        if any(image.size == (20, 12) for image in images):
            raise RuntimeError("model exploded on this image")
        return original(images)

    monkeypatch.setattr(segmenter, "spurious_masks", flaky)
    preds = backend.predictor.predict(
        [
            task("ds/train/circle/c0.png", 1),
            task("ds/train/square/s0.png", 2),
            task("ds/test/triangle/t0.png", 3),
        ]
    )
    assert [bool(p["result"]) for p in preds] == [True, False, True]


def test_settings_are_built_once_from_the_serve_settings(tmp_path):
    cfg = ServeConfig(checkpoint="m.pt", cache_dir=str(tmp_path), batch_size=3,
                      prediction_cache_size=7, request_deadline=9.5, fetch_parallelism=2,
                      max_tasks_per_request=5, max_request_pixels=1000,
                      max_response_bytes=2000)  # fmt: skip
    settings = PredictorSettings.from_config(cfg)
    assert (settings.batch_size, settings.cache_size, settings.request_deadline) == (3, 7, 9.5)
    assert settings.fetch_parallelism == 2 and settings.cache_dir == tmp_path
    assert settings.limits == RequestLimits(5, 1000, 2000)
    assert settings.saliency == cfg.saliency_config()

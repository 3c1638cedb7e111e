"""What the bench/ scripts share: paths, argument parsers, tables, JSON lines, and the few
measurements and fixtures more than one script uses.

Not a benchmark itself. The scripts run as ``python bench/<script>.py`` from the repository root
(``bench/`` is then first on ``sys.path``, so ``from common import ...`` finds this file, and the
editable install finds ``robustar_ls``); no bench script imports another one. Imports here are
the standard library's only: torch, numpy and ``robustar_ls`` are imported inside the functions
that need them, so a script that times its own imports (``profile_import.py``) or needs none
of them pays nothing for this module.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"

# --- arguments ---------------------------------------------------------------------------


def make_parser(doc: str | None, keep: str = "line") -> argparse.ArgumentParser:
    """An ArgumentParser described by a script's docstring ``doc``.

    ``keep``: ``"line"`` its first line, ``"paragraph"`` its first paragraph, ``"all"`` all of
    it, with the line breaks kept (RawTextHelpFormatter).
    """
    text = doc or ""
    if keep == "all":
        return argparse.ArgumentParser(
            description=text, formatter_class=argparse.RawTextHelpFormatter
        )
    if keep == "paragraph":
        return argparse.ArgumentParser(description=text.split("\n\n")[0])
    if keep == "line":
        return argparse.ArgumentParser(description=(text.splitlines() or [""])[0])
    raise ValueError(f"keep: {keep!r}, expected 'line', 'paragraph' or 'all'")


def add_segmenter_flags(p: argparse.ArgumentParser) -> None:
    """``--seg-size``, ``--rpn-pre``, ``--rpn-post``, ``--detections`` (None: the config's)."""
    texts = {
        "--seg-size": "Mask R-CNN min/max input side",
        "--rpn-pre": "RPN proposals per level pre-NMS",
        "--rpn-post": "RPN proposals after NMS",
        "--detections": "Mask R-CNN boxes per image",
    }
    for flag, text in texts.items():
        p.add_argument(flag, type=int, default=None, help=text)


def segmenter_overrides(args: argparse.Namespace) -> dict[str, int]:
    """The MaskRCNNConfig fields that :func:`add_segmenter_flags`' flags set (given ones only)."""
    given = {
        "min_size": args.seg_size,
        "max_size": args.seg_size,
        "rpn_pre_nms_top_n": args.rpn_pre,
        "rpn_post_nms_top_n": args.rpn_post,
        "detections_per_img": args.detections,
    }
    return {k: v for k, v in given.items() if v is not None}


def grid_or_report(args: argparse.Namespace, run: Callable, report: Callable) -> None:
    """``report(args)`` under ``--report``, else ``run(args)`` (the grid scripts' main)."""
    (report if args.report else run)(args)


# --- machine -----------------------------------------------------------------------------


def load_average() -> float:
    """The 1-minute load average (what else ran while a script timed something)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# --- JSON lines --------------------------------------------------------------------------


def read_jsonl(*paths: Path | str) -> list[dict]:
    """The rows of the JSON-lines files ``paths`` (missing files and blank lines skipped)."""
    rows = []
    for path in map(Path, paths):
        if path.is_file():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def append_jsonl(path: Path | str, row: dict) -> None:
    """Append ``row`` as one JSON line to ``path`` (flushed: a killed grid keeps its rows)."""
    with Path(path).open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


# --- tables ------------------------------------------------------------------------------


def mean_cell(values: Sequence[float], digits: int = 2) -> str:
    """A markdown cell: the one value, or the bold mean and every value; ``–`` for none."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    each = " / ".join(f"{v:.{digits}f}" for v in values)
    return f"**{statistics.mean(values):.{digits}f}** ({each})"


def markdown_row(cells: Iterable[object]) -> str:
    """``| a | b |``: cells as ``str`` makes them, an empty one as ``| |``."""
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def markdown_table(header: Sequence[str], rows: Iterable[Iterable[object]]) -> list[str]:
    """The lines of a markdown table: header, ``|---|---|`` rule, rows."""
    return [markdown_row(header), "|" + "---|" * len(header), *map(markdown_row, rows)]


def plain_table(
    columns: Sequence[tuple[str, str, str]],
    rows: Iterable[dict],
    sep: str = " ",
    rule: bool = True,
) -> list[str]:
    """The lines of a fixed-width table: ``columns`` are (title, key, format spec).

    The title takes the spec's alignment and width (``">11.2f"``: ``">11"``), the values the
    whole spec; ``rule`` adds a line of ``-`` as long as the header under it.
    """
    titles = []
    for title, _, spec in columns:
        align = spec[0] if spec[:1] in "<>^" and spec else ""
        width = "".join(c for c in spec[len(align) :].split(".")[0] if c.isdigit())
        titles.append(format(title, f"{align}{width}"))
    header = sep.join(titles)
    lines = [header, "-" * len(header)] if rule else [header]
    lines += [sep.join(format(row[key], spec) for _, key, spec in columns) for row in rows]
    return lines


# --- fixtures ----------------------------------------------------------------------------


def tiny_image_folder(root: Path, n: int, classes: int = 2, size: int = 8) -> Path:
    """``n`` tiny PNGs under ``root/train/c<k>/`` (one encoded image written n times)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (120, 60, 30)).save(buf, format="PNG")
    png = buf.getvalue()
    for k in range(classes):
        (root / "train" / f"c{k}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / "train" / f"c{i % classes}" / f"{i:06d}.png").write_bytes(png)
    return root


def train_shortcut(root: Path, synthetic, train, model=None) -> dict | None:
    """Make the synthetic dataset ``root`` and train its shortcut model ``root/shortcut.pt``,
    once: None when the checkpoint is already there, else the training summary."""
    from robustar_ls.config import ModelConfig
    from robustar_ls.data.synthetic import make_dataset
    from robustar_ls.train.run import train_classifier

    ckpt = root / "shortcut.pt"
    if ckpt.is_file():
        return None
    make_dataset(root, synthetic)
    summary = train_classifier(root, root / "shortcut.tmp", model or ModelConfig(), train)
    (root / "shortcut.tmp").replace(ckpt)
    return summary


def budget_shortcut_model(args, kind: str, seed: int, results: Path) -> Path:
    """bench_budget.py's dataset and shortcut model, made once under ``--work`` (also
    bench_propagate.py's, whose ``--bias`` other than 1 tags the folder ``-b<bias>``); a
    ``shortcut`` row with its accuracies is appended to ``results`` when it is trained."""
    from robustar_ls.config import ModelConfig, SyntheticConfig, TrainConfig

    bias = getattr(args, "bias", 1.0)
    tag = "" if bias == 1.0 else f"-b{bias}"
    root = Path(args.work) / f"{kind}-{args.spurious_fraction}{tag}-s{seed}"
    cfg = SyntheticConfig(
        kind=kind,
        per_class=args.per_class,
        val_per_class=args.eval_per_class,
        test_per_class=args.eval_per_class,
        spurious_fraction=args.spurious_fraction,
        bias=bias,
        seed=seed,
    )
    train = TrainConfig(epochs=args.shortcut_epochs, seed=seed, device=args.device)
    summary = train_shortcut(root, cfg, train, ModelConfig(width=args.width))
    if summary is not None:
        accs = {s: m["accuracy"] for s, m in summary["splits"].items()}
        row = {"run": "shortcut", "kind": kind, "seed": seed, "accuracy": accs}
        append_jsonl(results, {**row, "spurious_fraction": args.spurious_fraction, "bias": bias})
    return root


def seeded_recipe(name: str, seed: int, device: str):
    """``Recipe(name)`` with its default fine-tuning and rebuild schedules on ``seed`` and
    ``device``."""
    from dataclasses import replace

    from robustar_ls.train.recipe import Recipe

    default = Recipe()
    return Recipe(
        name,
        finetune=replace(default.finetune, seed=seed, device=device),
        rebuild=replace(default.rebuild, seed=seed, device=device),
    )


# --- influence cost (bench_influence_cost.py, bench_influence.py) ------------------------

GRAM_ROWS = 4096


def time_plain(model, batches) -> float:
    """Seconds for one plain forward+backward pass (cross-entropy) over ``batches``."""
    import torch

    start = time.perf_counter()
    for images, labels in batches:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def time_featurize(scorer, batches) -> float:
    """Seconds for ``scorer`` to featurize ``batches`` (target margin)."""
    start = time.perf_counter()
    for _ in scorer.feature_batches(batches, "margin"):
        pass
    return time.perf_counter() - start


def scorer_for(model, k: int, projection: str):
    """A CPU InfluenceScorer of ``model`` projecting to ``k`` with ``projection``."""
    from robustar_ls.config import InfluenceConfig
    from robustar_ls.explain.influence import InfluenceScorer

    return InfluenceScorer(model, None, InfluenceConfig(k=k, projection=projection), device="cpu")


def measure_cost(
    model, batches, k: int, rounds: int = 5, projections: tuple[str, ...] = ("sketch", "gaussian")
) -> dict:
    """Plain fwd+bwd and featurizing with each projection, in ``rounds`` rotated rounds."""
    scorers = {proj: scorer_for(model, k, proj) for proj in dict.fromkeys(("sketch", *projections))}
    time_plain(model, batches[:1])  # warm-up (and the Gaussian blocks' first generation)
    for scorer in scorers.values():
        time_featurize(scorer, batches[:1])
    jobs = {"plain": lambda: time_plain(model, batches)}
    jobs.update({p: (lambda s=s: time_featurize(s, batches)) for p, s in scorers.items()})
    names = list(jobs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(jobs[name]())
    images = sum(len(b[1]) for b in batches)
    report = {"images": images, "parameters": int(sum(scorers["sketch"].dims))}
    report.update({"rounds": rounds, "seconds": times})
    for proj in scorers:
        ratios = [f / p for f, p in zip(times[proj], times["plain"], strict=True)]
        report[f"{proj}_ratio"] = statistics.median(ratios)
        report[f"{proj}_ratio_spread"] = spread(ratios)
    report["sketch_s_per_image"] = statistics.median(times["sketch"]) / images
    return report


def _features_file(path: Path, n: int, k: int, rng) -> None:
    import numpy as np

    memmap = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, k))
    for lo in range(0, n, 8192):
        rows = min(8192, n - lo)
        memmap[lo : lo + rows] = rng.standard_normal((rows, k), dtype=np.float32)
    memmap.flush()


def measure_query(
    n: int, t: int, k: int, per_image_featurize: float | Callable[[], float], repeats: int = 3
) -> dict:
    """``t`` test x ``n`` train: random float16 features in a memmap, streamed by the query.

    The cache's Gram matrix is accumulated while featurizing (one-off per model version); here
    it is timed on the first ``GRAM_ROWS`` rows only and the query uses ``n I`` (the expected
    Gram of N(0, 1) features): the query's cost does not depend on its values.
    ``per_image_featurize``: seconds to featurize one image, or a function timing it, then
    called after each query so that each ratio comes from one moment of the machine's load.
    """
    import tempfile

    import numpy as np

    from robustar_ls.config import InfluenceConfig
    from robustar_ls.explain.feature_cache import TrainFeatures, gram_of
    from robustar_ls.explain.influence import kernel_scores

    timer = per_image_featurize if callable(per_image_featurize) else None
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-influence-") as tmp:
        path = Path(tmp) / "train_features.npy"
        _features_file(path, n, k, rng)
        features = np.load(path, mmap_mode="r")
        rows = min(GRAM_ROWS, n)
        start = time.perf_counter()
        gram_of(np.asarray(features[:rows], dtype=np.float32))
        gram_s_per_image = (time.perf_counter() - start) / rows
        train = TrainFeatures(
            features=features,
            row_scales=np.ones(n, dtype=np.float32),
            gram=np.eye(k) * n,
            feature_sum=np.zeros(k),
            meta={"synthetic": True},
        )
        test = rng.standard_normal((t, k), dtype=np.float32)
        seconds, per_image = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            result = kernel_scores(train, test, InfluenceConfig(aggregate="sum"))
            seconds.append(time.perf_counter() - start)
            per_image.append(timer() if timer else float(per_image_featurize))
        assert result.scores.shape == (n,)
        del features, train
    ratios = [s / (p * t) for s, p in zip(seconds, per_image, strict=True)]
    return {
        "train": n,
        "test": t,
        "k": k,
        "query_seconds": seconds,
        "featurize_s_per_image": per_image,
        "query_s": statistics.median(seconds),
        "query_ms_per_test_image": 1000 * statistics.median(seconds) / t,
        "query_over_featurizing_the_test_images": statistics.median(ratios),
        "query_over_featurizing_spread": spread(ratios),
        "gram_s_per_train_image": gram_s_per_image,
        "gram_over_featurizing": gram_s_per_image / statistics.median(per_image),
    }

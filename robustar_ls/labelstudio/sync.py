"""Pull finished "Spurious" brush annotations from Label Studio into the dataset's mask store.

How a sync runs
---------------
1. **Fetch** (nothing is written yet): the label config, then only the tasks with annotations
   (a Data Manager filter; id, data and annotations), page by page, ordered by task id, and,
   by id, the manifest's tasks not among them (annotations deleted, or moved while paging); the
   result is the one every task would give (unannotated tasks change no mask). Pages are
   retried with backoff on connection errors, timeouts and 5xx; if Label Studio still does not
   answer, :class:`LabelStudioUnavailable` is raised and the mask store is exactly as before.
2. **Plan**: for each task pick one annotation (the rule below), map the task to a training
   image, decode and check the changed masks.
3. **Write** (skipped with ``dry_run``): masks through :meth:`MaskStore.write` (atomic), removals,
   then the manifest, once.

Which annotation counts (the rule)
----------------------------------
- Cancelled annotations (``was_cancelled``: the annotator pressed *Skip*) are ignored; drafts are
  not annotations and are ignored too.
- Of the remaining ("finished") annotations of a task, the **most recently updated one wins**:
  the largest ``updated_at``, ties broken by the larger annotation id. Annotations by different
  annotators are not merged.
- The mask is the union (OR) of every region of that annotation whose ``from_name`` is the
  project's brush tag and whose label is ``Spurious``; "Model attention" regions (the saliency
  overlay) and every other tag are ignored. A region pixel counts when its brush alpha is at least
  128 (the threshold the mask store uses).
- A winning annotation with no Spurious region is a **negative**: the expert reviewed the image
  and found nothing spurious. It stores an all-zero mask, owned by Label Studio in the manifest
  like a painted one (*added*, *updated* or *unchanged*, and listed in ``negatives``). If an
  earlier sync stored a painted mask for that image, it becomes all-zero (*updated*): the
  annotator erased it. Paired training treats an all-zero mask as *not annotated* (no pair); the
  learned segmenter trains on it as a negative; propagation never predicts over it.

Mapping tasks to training images
--------------------------------
By the task's ``data["relpath"]`` (``<class>/<file>``, written by ``robustar-ls import``); failing
that, by the image URL: the part of a ``/data/local-files/?d=...`` path (or plain path) after its
last ``train/`` folder. A task that maps to no training image is an error entry. Tasks of
another split (``data["split"]`` = val | test, imported for browsing) are never masks: an
annotated one is listed as *ignored*.

Idempotence and ownership
-------------------------
The manifest (``<masks>/manifest.json``) maps each relpath to ``{task_id, annotation_id,
updated_at}``. A task whose winning annotation matches its manifest entry (and whose mask file
exists) is *unchanged* and is not even decoded. A new ``updated_at`` or annotation id replaces the
mask (*updated*). When a task has no finished annotation any more (deleted, or only cancelled
ones left) or disappeared, its mask (painted or negative) is *removed* — but only masks the
manifest says came from Label Studio; masks that were put there otherwise are never deleted.
A mask with a size different from its image on disk is an error entry: that mask is not
written and whatever was stored for the image before stays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from robustar_ls.config import SyncConfig
from robustar_ls.data.folders import ImageFolderSplits, SplitImages
from robustar_ls.data.images import displayed_size
from robustar_ls.data.masks import MaskStore
from robustar_ls.labels import SPURIOUS_LABEL
from robustar_ls.labelstudio.annotations import (
    choose_annotation,
    decode_regions,
    relpath_of_task,
    spurious_regions,
    stamp_text,
)
from robustar_ls.labelstudio.client import (
    LabelStudioError,
    LabelStudioUnavailable,
    RetryPolicy,
    fetch_annotated_tasks,
    project_label_config,
    project_task_count,
    split_of,
)
from robustar_ls.labelstudio.config import find_tags

log = logging.getLogger(__name__)

__all__ = ["LabelStudioUnavailable", "SyncError", "SyncReport", "plan_sync", "sync_masks"]

ANNOTATION_RULE = (
    "cancelled (skipped) annotations are ignored; of a task's finished annotations the most "
    "recently updated one wins (largest updated_at, then largest id); its 'Spurious' brush "
    "regions are OR-ed into the mask, 'Model attention' regions are ignored"
)
DEFAULT_PAGE_SIZE = 1000
NOTHING_WRITTEN = (
    "Nothing was written; the mask store is as before. Check that Label Studio is running and "
    "run the sync again."
)


class SyncError(LabelStudioError):
    """The sync could not run (project, label config); the message says what to fix."""


COUNTS = ("added", "updated", "removed", "unchanged", "negatives", "skipped", "ignored", "errors")


@dataclass
class SyncReport:
    """What a sync changed (or, with ``dry_run``, would change). Lists hold training relpaths."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # of added/updated/unchanged: all-zero masks (an annotation with no Spurious region)
    negatives: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {task_id, relpath, reason}
    # annotated tasks of another split (val, test): never turned into masks
    ignored: list[dict[str, Any]] = field(default_factory=list)  # {task_id, relpath, split}
    errors: list[dict[str, Any]] = field(default_factory=list)  # {task_id, relpath, image, error}
    dry_run: bool = False
    tasks: int = 0
    rule: str = ANNOTATION_RULE

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in COUNTS}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["counts"] = self.counts()
        return out

    def summary(self) -> str:
        c = self.counts()
        verb = "would change" if self.dry_run else "changed"
        if not self.changed:
            head = "masks up to date, nothing written" if not self.dry_run else "nothing to do"
        else:
            head = f"{verb}: {c['added']} added, {c['updated']} updated, {c['removed']} removed"
        ignored = f", {c['ignored']} annotated non-training tasks ignored" if c["ignored"] else ""
        negatives = f" ({c['negatives']} negatives: nothing spurious)" if c["negatives"] else ""
        return (
            f"{head}; {c['unchanged']} unchanged{negatives}, {c['skipped']} skipped{ignored}, "
            f"{c['errors']} errors ({self.tasks} tasks)"
        )


# -- planning -------------------------------------------------------------------------------


@dataclass
class _Plan:
    before: dict[str, Any]  # the manifest the plan was made from
    manifest: dict[str, Any]  # the manifest after the plan
    writes: dict[str, np.ndarray] = field(default_factory=dict)
    removals: list[str] = field(default_factory=list)


@dataclass
class _Planner:
    """The state of one :func:`plan_sync` run, one task at a time."""

    brush_name: str
    image_key: str
    data: ImageFolderSplits
    store: MaskStore
    manifest: dict[str, Any]
    label: str
    samples: SplitImages  # the training images, looked up (not listed) by relpath
    report: SyncReport
    plan: _Plan
    seen: dict[str, int] = field(default_factory=dict)  # relpath -> task id that claimed it

    def error(self, task_id: int, rel: str | None, image: Any, message: str) -> None:
        self.report.errors.append(
            {"task_id": task_id, "relpath": rel, "image": image, "error": message}
        )

    def task(self, task: Mapping[str, Any]) -> None:
        task_id = int(task["id"])
        task_data = task.get("data") or {}
        annotations = task.get("annotations") or []
        split = split_of(task_data)
        if split != "train":
            if annotations:
                self.report.ignored.append(
                    {"task_id": task_id, "relpath": task_data.get("relpath"), "split": split}
                )
            return
        chosen = choose_annotation(annotations)
        if chosen is None:
            if annotations:
                reason = "every annotation was cancelled (skipped)"
                self.skip(task_id, task_data.get("relpath"), reason)
            return
        rel = relpath_of_task(task_data, self.image_key, self.samples)
        if rel is None:
            message = (
                f"task {task_id} shows no image of {self.data.root / 'train'} (task data "
                "needs 'relpath' = <class>/<file> or a local-files URL under train/)"
            )
            self.error(task_id, task_data.get("relpath"), task_data.get(self.image_key), message)
            return
        if rel in self.seen:
            message = (
                f"tasks {self.seen[rel]} and {task_id} both show {rel}; the mask of task "
                f"{self.seen[rel]} was kept"
            )
            self.error(task_id, rel, str(self.samples[rel].path), message)
            return
        self.seen[rel] = task_id
        self.annotation(task_id, rel, chosen)

    def skip(self, task_id: int, rel: str | None, reason: str) -> None:
        self.report.skipped.append({"task_id": task_id, "relpath": rel, "reason": reason})

    def annotation(self, task_id: int, rel: str, chosen: Mapping[str, Any]) -> None:
        entry = {
            "task_id": task_id,
            "annotation_id": int(chosen.get("id") or 0),
            "updated_at": stamp_text(chosen.get("updated_at")),
        }
        old = self.manifest.get(rel)
        regions = spurious_regions(chosen.get("result") or [], self.brush_name, self.label)
        if not regions:  # a negative: reviewed, nothing spurious; stored as an all-zero mask
            self.report.negatives.append(rel)
        if old == entry and self.store.has(rel):
            self.report.unchanged.append(rel)
            return
        mask = self.mask(task_id, rel, entry["annotation_id"], regions)
        if mask is None:
            return
        self.plan.writes[rel] = mask
        self.plan.manifest[rel] = entry
        (self.report.updated if self.store.has(rel) else self.report.added).append(rel)

    def mask(
        self, task_id: int, rel: str, annotation_id: int, regions: Iterable[Mapping[str, Any]]
    ) -> np.ndarray | None:
        """The decoded mask (all-zero without ``regions``: a negative), checked against its
        image's size; None (an error entry) if not."""
        image = self.samples[rel].path
        regions = list(regions)
        try:
            width, height = displayed_size(image)
            mask = decode_regions(regions) if regions else np.zeros((height, width), bool)
        except (ValueError, OSError) as err:
            message = (
                f"task {task_id}, annotation {annotation_id} ({image}): cannot decode the "
                f"{self.label} mask: {err}"
            )
            self.error(task_id, rel, str(image), message)
            return None
        if mask.shape != (height, width):
            message = (
                f"task {task_id}, annotation {annotation_id}: the {self.label} mask is "
                f"{mask.shape[1]}x{mask.shape[0]} but image {image} is {width}x{height}; "
                "mask not written"
            )
            self.error(task_id, rel, str(image), message)
            return None
        return mask

    def orphans(self) -> None:
        """Masks from Label Studio whose task no longer has a finished annotation."""
        for rel, old in self.manifest.items():
            if rel in self.seen or not (isinstance(old, dict) and "task_id" in old):
                continue
            self.plan.removals.append(rel)
            self.plan.manifest.pop(rel, None)
        self.report.removed = sorted(r for r in self.plan.removals if self.store.has(r))
        for rel in self.plan.removals:
            if rel not in self.report.removed:
                log.info("manifest entry %s had no mask file any more; dropping it", rel)


def plan_sync(
    tasks: list[dict[str, Any]],
    brush_name: str,
    image_key: str,
    data: ImageFolderSplits,
    store: MaskStore,
    manifest: dict[str, Any],
    label: str = SPURIOUS_LABEL,
) -> tuple[_Plan, SyncReport]:
    """Decide every change from fetched tasks; reads the disk, writes nothing."""
    planner = _Planner(
        brush_name=brush_name,
        image_key=image_key,
        data=data,
        store=store,
        manifest=manifest,
        label=label,
        samples=data.images("train"),
        report=SyncReport(tasks=len(tasks)),
        plan=_Plan(before=dict(manifest), manifest=dict(manifest)),
    )
    for task in tasks:
        planner.task(task)
    planner.orphans()
    return planner.plan, planner.report


def apply_plan(plan: _Plan, store: MaskStore, progress: Callable | None = None) -> None:
    """Write the planned masks, then the removals, then the manifest.

    The manifest is written even when a write fails part-way, recording exactly what was done,
    so the next sync finishes the job.
    """
    manifest = dict(plan.before)
    items: Iterable[tuple[str, np.ndarray]] = plan.writes.items()
    if progress is not None and plan.writes:
        items = progress(items, desc="masks", unit="mask", total=len(plan.writes))
    try:
        for rel, mask in items:
            store.write(rel, mask)
            manifest[rel] = plan.manifest[rel]
        for rel in plan.removals:
            store.delete(rel)
            manifest.pop(rel, None)
    finally:
        store.write_manifest(manifest)


def _brush_name(label_config: str) -> tuple[str, str]:
    tags = find_tags(label_config)
    image_value = str(tags.image_value or "$image").lstrip("$")
    return str(tags.brush), image_value


def fetch_for_sync(
    client: Any,
    project_id: int,
    policy: RetryPolicy,
    page_size: int = DEFAULT_PAGE_SIZE,
    progress: Callable | None = None,
    manifest: Mapping[str, Any] | None = None,
) -> tuple[str, list[dict[str, Any]], int]:
    """The label config, the annotated tasks and the ``manifest``'s, and the project's task count.

    A refusal is a :class:`SyncError`; Label Studio not answering after the retries is a
    :class:`LabelStudioUnavailable`; both say that nothing was written.
    """
    entries = (manifest or {}).values()
    recheck = [e["task_id"] for e in entries if isinstance(e, dict) and "task_id" in e]
    try:
        label_config = project_label_config(client, project_id, policy)
        tasks = fetch_annotated_tasks(client, project_id, page_size, policy, progress, recheck)
        total = project_task_count(client, project_id, policy)
    except LabelStudioUnavailable as err:
        raise LabelStudioUnavailable(f"{err}. {NOTHING_WRITTEN}") from err.__cause__
    except LabelStudioError as err:
        raise SyncError(f"{err}. Nothing was written.") from err.__cause__
    return label_config, tasks, len(tasks) if total is None else total


def sync_masks(
    client: Any,
    project_id: int,
    data: ImageFolderSplits,
    store: MaskStore,
    sync: SyncConfig = SyncConfig(),
    *,
    dry_run: bool = False,
    progress: Callable | None = None,
    sleep: Callable[[float], None] | None = None,
) -> SyncReport:
    """Bring ``store`` in line with the project's finished annotations (see the module docs).

    ``sync``: the settings (retries, backoff, page size, brush label). Everything is fetched
    before anything is written; :class:`LabelStudioUnavailable` (after ``sync.retries``
    retries with ``sync.backoff``·2^k s waits, slept by ``sleep``) leaves the store untouched.
    """
    policy = RetryPolicy(sync.retries, sync.backoff, **({"sleep": sleep} if sleep else {}))
    manifest = store.read_manifest()
    label_config, tasks, total = fetch_for_sync(
        client, project_id, policy, sync.page_size, progress, manifest
    )
    brush_name, image_key = _brush_name(label_config)
    plan, report = plan_sync(tasks, brush_name, image_key, data, store, manifest, sync.label)
    report.tasks = total  # the project's tasks, not only the annotated ones fetched
    report.dry_run = dry_run
    if not dry_run and (plan.writes or plan.removals):
        apply_plan(plan, store, progress)
    for error in report.errors:
        log.warning("sync: %s", error["error"])
    log.info("sync of project %s: %s", project_id, report.summary())
    return report

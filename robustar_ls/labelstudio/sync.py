"""Pull finished "Spurious" brush annotations from Label Studio into the dataset's mask store.

How a sync runs
---------------
1. **Fetch** (nothing is written yet): the project's label config, then every task of the
   project with its annotations, page by page (``GET /api/tasks/?project=ID&fields=all&page=N``
   through ``client.tasks.list``; Label Studio orders that list by task id). Each page is
   retried with exponential backoff on connection errors, timeouts and 5xx answers. If Label
   Studio still does not answer, :class:`LabelStudioUnavailable` is raised and the mask store is
   exactly as it was before the run.
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
- A winning annotation with no Spurious region stores no mask (reported as *skipped*); if an
  earlier sync stored one for that image, it is removed: the annotator erased it.

Mapping tasks to training images
--------------------------------
By the task's ``data["relpath"]`` (``<class>/<file>``, written by ``robustar-ls import``); failing
that, by the image URL: the part of a ``/data/local-files/?d=...`` path (or plain path) after its
last ``train/`` folder. A task that maps to no training image is an error entry.

Idempotence and ownership
-------------------------
The manifest (``<masks>/manifest.json``) maps each relpath to ``{task_id, annotation_id,
updated_at}``. A task whose winning annotation matches its manifest entry (and whose mask file
exists) is *unchanged* and is not even decoded. A new ``updated_at`` or annotation id replaces the
mask (*updated*). When a task has no finished annotation any more (deleted, or only cancelled
ones left) or disappeared, its mask is *removed* — but only masks the manifest says came from
Label Studio; masks that were put there otherwise are never deleted. A mask with a size
different from its image on disk is an error entry: that mask is not written and whatever was
stored for the image before stays.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.images import displayed_size
from robustar_ls.data.masks import MaskStore

log = logging.getLogger(__name__)

SPURIOUS_LABEL = "Spurious"
ALPHA_THRESHOLD = 128
ANNOTATION_RULE = (
    "cancelled (skipped) annotations are ignored; of a task's finished annotations the most "
    "recently updated one wins (largest updated_at, then largest id); its 'Spurious' brush "
    "regions are OR-ed into the mask, 'Model attention' regions are ignored"
)
DEFAULT_PAGE_SIZE = 100
# the SDK retries by itself (twice, with its own backoff); ours is the one retry policy
NO_SDK_RETRIES = {"max_retries": 0}


class SyncError(RuntimeError):
    """The sync could not run (project, label config); the message says what to fix."""


class LabelStudioUnavailable(SyncError):
    """Label Studio stopped answering while the sync fetched; nothing was written."""


@dataclass
class SyncReport:
    """What a sync changed (or, with ``dry_run``, would change). Lists hold training relpaths."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {task_id, relpath, reason}
    errors: list[dict[str, Any]] = field(default_factory=list)  # {task_id, relpath, image, error}
    dry_run: bool = False
    tasks: int = 0
    rule: str = ANNOTATION_RULE

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def counts(self) -> dict[str, int]:
        return {
            name: len(getattr(self, name))
            for name in ("added", "updated", "removed", "unchanged", "skipped", "errors")
        }

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
        return (
            f"{head}; {c['unchanged']} unchanged, {c['skipped']} skipped, {c['errors']} errors "
            f"({self.tasks} tasks)"
        )


# -- fetching -------------------------------------------------------------------------------


def base_url(client: Any) -> str:
    """The Label Studio URL a label-studio-sdk client talks to (for messages)."""
    wrapper = getattr(client, "_client_wrapper", None)
    getter = getattr(wrapper, "get_base_url", None)
    return str(getter()) if callable(getter) else "(unknown URL)"


def is_transient(err: BaseException) -> bool:
    """Connection errors, timeouts and 5xx answers are worth retrying; 4xx are not."""
    import httpx

    if isinstance(err, httpx.TransportError | ConnectionError | TimeoutError):
        return True
    status = getattr(err, "status_code", None)
    return isinstance(status, int) and status >= 500


def with_retries(
    call: Callable[[], Any],
    what: str,
    url: str,
    retries: int,
    backoff: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Run ``call``; on a transient error retry ``retries`` times, waiting backoff·2^k seconds."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as err:
            if not is_transient(err):
                status = getattr(err, "status_code", None)
                if not isinstance(status, int):
                    raise
                hint = {
                    401: "; check the API key (LABEL_STUDIO_API_KEY)",
                    403: "; the API key's user may not read this project",
                    404: "; does the project exist?",
                }.get(status, "")
                raise SyncError(
                    f"Label Studio at {url} refused {what}: HTTP {status} "
                    f"{getattr(err, 'body', '')}{hint}. Nothing was written."
                ) from err
            if attempt == retries:
                raise LabelStudioUnavailable(
                    f"Label Studio at {url} stopped answering while fetching {what} "
                    f"({retries + 1} tries): {type(err).__name__}: {err}. Nothing was written; "
                    "the mask store is as before. Check that Label Studio is running and "
                    "run the sync again."
                ) from err
            delay = backoff * (2**attempt)
            log.warning(
                "Label Studio at %s: %s failed (%s); retry %d/%d in %.1fs",
                url,
                what,
                err,
                attempt + 1,
                retries,
                delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")


def as_dict(obj: Any) -> dict[str, Any]:
    """An SDK model (pydantic) or dict as a plain dict."""
    if isinstance(obj, Mapping):
        return dict(obj)
    dump = getattr(obj, "model_dump", None) or getattr(obj, "dict", None)
    if dump is None:
        raise TypeError(f"cannot read {type(obj).__name__} as a mapping")
    return dump()


def fetch_tasks(
    client: Any,
    project_id: int,
    page_size: int = DEFAULT_PAGE_SIZE,
    retries: int = 4,
    backoff: float = 0.5,
    progress: Callable | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """Every task of the project with its annotations, fetched page by page (with retries)."""
    url = base_url(client)

    def page(number: int) -> tuple[list[dict[str, Any]], int]:
        pager = with_retries(
            lambda: client.tasks.list(
                project=project_id,
                fields="all",
                page=number,
                page_size=page_size,
                request_options=NO_SDK_RETRIES,
            ),
            f"page {number} of the tasks of project {project_id}",
            url,
            retries,
            backoff,
            sleep,
        )
        items = [as_dict(task) for task in (pager.items or [])]
        total = getattr(pager.response, "total", None)
        return items, int(total) if total is not None else len(items)

    tasks, total = page(1)
    pages = max(1, math.ceil(total / page_size))
    numbers: Iterable[int] = range(2, pages + 1)
    if progress is not None and pages > 1:
        numbers = progress(numbers, desc="Label Studio pages", unit="page", total=pages - 1)
    for number in numbers:
        items, _ = page(number)
        if not items:
            break
        tasks.extend(items)
    by_id: dict[int, dict[str, Any]] = {}
    for task in tasks:
        by_id[int(task["id"])] = task  # tasks added while paging may shift one onto two pages
    return [by_id[k] for k in sorted(by_id)]


def project_label_config(
    client: Any, project_id: int, retries: int = 4, backoff: float = 0.5, sleep=time.sleep
) -> str:
    project = with_retries(
        lambda: client.projects.get(id=project_id, request_options=NO_SDK_RETRIES),
        f"project {project_id}",
        base_url(client),
        retries,
        backoff,
        sleep,
    )
    config = getattr(project, "label_config", None)
    if config is None and isinstance(project, Mapping):
        config = project.get("label_config")
    if not config:
        raise SyncError(f"project {project_id} has no label config; import the project first")
    return str(config)


# -- choosing and decoding ------------------------------------------------------------------


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if not value:
        return datetime.min
    text = str(value).replace("Z", "+00:00")
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return datetime.min
    # compare naive and aware stamps alike: Label Studio writes one format per server
    return (
        stamp.replace(tzinfo=None)
        if stamp.tzinfo is None
        else stamp.astimezone().replace(tzinfo=None)
    )


def stamp_text(value: Any) -> str:
    """``updated_at`` as a stable string for the manifest."""
    if isinstance(value, datetime):
        return value.isoformat()
    return "" if value is None else str(value)


def choose_annotation(annotations: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The annotation that counts for a task (see the module docstring), or None."""
    finished = [a for a in annotations if not a.get("was_cancelled")]
    if not finished:
        return None
    return max(finished, key=lambda a: (_timestamp(a.get("updated_at")), int(a.get("id") or 0)))


def spurious_regions(
    result: Iterable[Mapping[str, Any]], brush_name: str, label: str = SPURIOUS_LABEL
) -> list[Mapping[str, Any]]:
    """The brush regions of ``result`` labelled ``label`` on the brush tag ``brush_name``."""
    regions = []
    for region in result or []:
        if region.get("from_name") != brush_name:
            continue
        value = region.get("value") or {}
        if label not in (value.get("brushlabels") or []):
            continue
        regions.append(region)
    return regions


def decode_regions(regions: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """OR of the regions' RLE masks → bool (H, W). Raises ValueError on bad or mixed sizes."""
    from robustar_ls.labelstudio.brush import rle_to_mask

    combined: np.ndarray | None = None
    for region in regions:
        value = region.get("value") or {}
        rle = value.get("rle")
        if value.get("format", "rle") != "rle" or not rle:
            raise ValueError(
                f"region {region.get('id')!r} is not an RLE brush mask "
                f"(format {value.get('format')!r})"
            )
        height, width = region.get("original_height"), region.get("original_width")
        if not height or not width:
            raise ValueError(f"region {region.get('id')!r} has no original_width/original_height")
        mask = np.asarray(rle_to_mask(rle, int(height), int(width))) >= ALPHA_THRESHOLD
        if combined is None:
            combined = mask
        elif combined.shape != mask.shape:
            raise ValueError(
                f"regions of one annotation have different sizes: {combined.shape[1]}x"
                f"{combined.shape[0]} and {mask.shape[1]}x{mask.shape[0]}"
            )
        else:
            combined |= mask
    if combined is None:
        raise ValueError("no regions to decode")
    return combined


# -- mapping tasks to training images -------------------------------------------------------


def _path_of_url(url: str) -> str:
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    if "d" in query:
        return unquote(query["d"][0])
    return unquote(parsed.path)


def relpath_of_task(data: Mapping[str, Any], image_key: str, train: set[str]) -> str | None:
    """The training relpath a task shows (see the module docstring), or None."""
    rel = data.get("relpath")
    if isinstance(rel, str) and rel in train:
        return rel
    url = data.get(image_key)
    if not isinstance(url, str) or not url:
        return None
    parts = PurePosixPath(_path_of_url(url).replace("\\", "/")).parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "train":
            candidate = "/".join(parts[i + 1 :])
            if candidate in train:
                return candidate
    return None


# -- the sync -------------------------------------------------------------------------------


@dataclass
class _Plan:
    before: dict[str, Any]  # the manifest the plan was made from
    manifest: dict[str, Any]  # the manifest after the plan
    writes: dict[str, np.ndarray] = field(default_factory=dict)
    removals: list[str] = field(default_factory=list)


def _brush_name(label_config: str) -> tuple[str, str]:
    from robustar_ls.labelstudio.config import find_tags

    tags = find_tags(label_config)
    image_value = str(tags.image_value or "$image").lstrip("$")
    return str(tags.brush), image_value


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
    samples = {s.relpath: s for s in data.splits.get("train", [])}
    train = set(samples)
    report = SyncReport(tasks=len(tasks))
    plan = _Plan(before=dict(manifest), manifest=dict(manifest))
    seen: dict[str, int] = {}  # relpath -> task id that claimed it

    for task in tasks:
        task_id = int(task["id"])
        task_data = task.get("data") or {}
        annotations = task.get("annotations") or []
        chosen = choose_annotation(annotations)
        if chosen is None:
            if annotations:
                report.skipped.append(
                    {
                        "task_id": task_id,
                        "relpath": task_data.get("relpath"),
                        "reason": "every annotation was cancelled (skipped)",
                    }
                )
            continue
        rel = relpath_of_task(task_data, image_key, train)
        if rel is None:
            report.errors.append(
                {
                    "task_id": task_id,
                    "relpath": task_data.get("relpath"),
                    "image": task_data.get(image_key),
                    "error": f"task {task_id} shows no image of {data.root / 'train'} (task data "
                    "needs 'relpath' = <class>/<file> or a local-files URL under train/)",
                }
            )
            continue
        if rel in seen:
            report.errors.append(
                {
                    "task_id": task_id,
                    "relpath": rel,
                    "image": str(samples[rel].path),
                    "error": f"tasks {seen[rel]} and {task_id} both show {rel}; the mask of task "
                    f"{seen[rel]} was kept",
                }
            )
            continue
        seen[rel] = task_id
        entry = {
            "task_id": task_id,
            "annotation_id": int(chosen.get("id") or 0),
            "updated_at": stamp_text(chosen.get("updated_at")),
        }
        old = manifest.get(rel)
        regions = spurious_regions(chosen.get("result") or [], brush_name, label)
        if not regions:
            report.skipped.append(
                {
                    "task_id": task_id,
                    "relpath": rel,
                    "reason": f"annotation {entry['annotation_id']} has no {label} region",
                }
            )
            if isinstance(old, dict) and "task_id" in old:
                plan.removals.append(rel)
                plan.manifest.pop(rel, None)
            continue
        if old == entry and store.has(rel):
            report.unchanged.append(rel)
            continue
        image = samples[rel].path
        try:
            mask = decode_regions(regions)
            width, height = displayed_size(image)
        except (ValueError, OSError) as err:
            report.errors.append(
                {
                    "task_id": task_id,
                    "relpath": rel,
                    "image": str(image),
                    "error": f"task {task_id}, annotation {entry['annotation_id']} ({image}): "
                    f"cannot decode the {label} mask: {err}",
                }
            )
            continue
        if mask.shape != (height, width):
            report.errors.append(
                {
                    "task_id": task_id,
                    "relpath": rel,
                    "image": str(image),
                    "error": f"task {task_id}, annotation {entry['annotation_id']}: the {label} "
                    f"mask is {mask.shape[1]}x{mask.shape[0]} but image {image} is "
                    f"{width}x{height}; mask not written",
                }
            )
            continue
        plan.writes[rel] = mask
        plan.manifest[rel] = entry
        (report.updated if store.has(rel) else report.added).append(rel)

    # masks that came from Label Studio whose task no longer has a finished annotation
    for rel, old in manifest.items():
        if rel in seen or not (isinstance(old, dict) and "task_id" in old):
            continue
        plan.removals.append(rel)
        plan.manifest.pop(rel, None)
    report.removed = sorted(r for r in plan.removals if store.has(r))
    for rel in plan.removals:
        if rel not in report.removed:
            log.info("manifest entry %s had no mask file any more; dropping it", rel)
    return plan, report


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


def sync_masks(
    client: Any,
    project_id: int,
    data: ImageFolderSplits,
    store: MaskStore,
    dry_run: bool = False,
    progress: Callable | None = None,
    retries: int = 4,
    backoff: float = 0.5,
    page_size: int = DEFAULT_PAGE_SIZE,
    label: str = SPURIOUS_LABEL,
    sleep: Callable[[float], None] = time.sleep,
) -> SyncReport:
    """Bring ``store`` in line with the project's finished annotations (see the module docs).

    Everything is fetched before anything is written; :class:`LabelStudioUnavailable` (after
    ``retries`` retries with ``backoff``·2^k s waits) leaves the store untouched.
    """
    brush_name, image_key = _brush_name(
        project_label_config(client, project_id, retries, backoff, sleep)
    )
    tasks = fetch_tasks(client, project_id, page_size, retries, backoff, progress, sleep)
    manifest = store.read_manifest()
    plan, report = plan_sync(tasks, brush_name, image_key, data, store, manifest, label)
    report.dry_run = dry_run
    if not dry_run and (plan.writes or plan.removals):
        apply_plan(plan, store, progress)
    for error in report.errors:
        log.warning("sync: %s", error["error"])
    log.info("sync of project %s: %s", project_id, report.summary())
    return report

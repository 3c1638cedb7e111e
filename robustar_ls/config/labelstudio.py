"""Reaching Label Studio, pulling its annotations, importing a dataset into it."""

from __future__ import annotations

from dataclasses import dataclass, field

from robustar_ls.labels import SPURIOUS_LABEL


@dataclass(frozen=True)
class LabelStudioConfig:
    """How to reach Label Studio. The API key comes from the environment only."""

    url: str = "http://localhost:8080"
    api_key: str = field(default="", repr=False)
    project: str = "robustar-ls"
    document_root: str = ""


@dataclass(frozen=True)
class SyncConfig:
    """Pulling finished brush annotations from Label Studio (``robustar_ls.labelstudio.sync``)."""

    retries: int = 4  # retries per request on connection errors / 5xx answers
    backoff: float = 0.5  # seconds before the first retry; doubled each time
    page_size: int = 1000  # tasks per page (one page for up to 1,000 annotated tasks)
    label: str = SPURIOUS_LABEL  # the brush label whose regions make the mask


@dataclass(frozen=True)
class ImportConfig:
    """``robustar-ls import``: an ImageFolder dataset becomes a Label Studio project."""

    data: str = ""  # dataset folder with train/<class>/<image>
    backend_url: str = ""  # ML backend to connect ("" = none)
    label_config: str = ""  # labeling config XML file ("" = the packaged robustar.xml)
    batch_size: int = 1000  # tasks per import request
    # Where the browser reaches the backend's saliency heatmaps ("" = backend_url); differs
    # from backend_url under docker, where Label Studio calls http://backend:9090.
    saliency_base_url: str = ""
    cache_dir: str = ""  # the backend's cache dir, holding the URL-signing key ("" = default)
    saliency_url_lifetime: float = 7 * 24 * 3600.0  # seconds; the backend's predictions renew

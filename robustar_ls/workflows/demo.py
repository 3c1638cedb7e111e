"""``robustar-ls demo``: the whole loop on a built-in dataset, from nothing to annotating.

Steps (each reuses what an earlier run left in the work folder):

1. a synthetic ``patch`` dataset whose corner patch is a shortcut for the class;
2. a small classifier trained on it (it learns the shortcut: high in-distribution accuracy,
   low out-of-domain accuracy);
3. Label Studio (own virtualenv, SQLite, local-files serving, a demo user and token);
4. the ML backend (``robustar-ls serve``, a subprocess);
5. the project import; the backend then ranks the tasks by influence and stores predictions of
   the top ones (as after every new model version), and the demo waits for it;
6. a summary of where to click; both servers run until Ctrl-C.

Everything lives under the work folder (default ``./demo``): ``documents/`` is Label Studio's
local-files document root and holds the dataset, ``label-studio/`` its database,
``model.pt`` the served checkpoint, ``credentials.json`` the demo login.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from robustar_ls.config import (
    DemoConfig,
    ImportConfig,
    LabelStudioConfig,
    ModelConfig,
    SyntheticConfig,
    TrainConfig,
)
from robustar_ls.errors import RobustarError
from robustar_ls.workflows.label_studio import (
    Credentials,
    LabelStudioServer,
    free_port,
    log_tail,
    running_label_studio,
    stop_process,
)

log = logging.getLogger(__name__)

DEMO_USER = "demo@robustar-ls.dev"
PROJECT = "robustar-ls demo"


class DemoError(RobustarError, RuntimeError):
    """A demo step failed; the message says which and how to fix it."""


def demo_credentials(path: Path) -> Credentials:
    """The demo login, made once and kept so a rerun logs in with the same password."""
    if path.is_file():
        stored = json.loads(path.read_text())
        return Credentials(stored["username"], stored["password"], stored["legacy_token"])
    creds = Credentials(DEMO_USER, secrets.token_urlsafe(12), secrets.token_hex(20))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(creds.__dict__, indent=1))
    path.chmod(0o600)
    return creds


def prepare_model(cfg: DemoConfig, data: Path, model: Path, progress: Callable | None) -> None:
    """Dataset + shortcut classifier, unless an earlier run made them."""
    from robustar_ls.data.synthetic import counts_text, make_dataset
    from robustar_ls.train.run import train_classifier

    if not (data / "spurious.json").is_file():
        log.info("demo: make the dataset")
        synthetic = SyntheticConfig(
            kind="patch",
            per_class=cfg.per_class,
            test_per_class=50,
            val_per_class=50,
            spurious_fraction=cfg.spurious_fraction,
        )
        bar = (lambda it: progress(it, desc="images", unit="img")) if progress else None
        summary = make_dataset(data, synthetic, progress=bar)
        log.info("demo: wrote %s images to %s", counts_text(summary["images"]), data)
    if not model.is_file():
        log.info("demo: train the classifier (it learns the shortcut)")
        summary = train_classifier(
            data, model, ModelConfig(), TrainConfig(epochs=cfg.epochs), progress=progress
        )
        accs = ", ".join(f"{s} {m['accuracy']:.3f}" for s, m in summary["splits"].items())
        log.info("demo: saved %s (%s): accuracy %s", model, summary["model_version"], accs)


@contextmanager
def running_backend(
    checkpoint: Path, document_root: Path, data: Path, port: int, ls: LabelStudioServer, log_path
) -> Iterator[str]:
    """``robustar-ls serve`` in a subprocess (one gunicorn worker) until the context exits."""
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, LABEL_STUDIO_API_KEY=ls.legacy_token)
    command = [
        sys.executable,
        "-m",
        "robustar_ls.cli",
        "serve",
        "--checkpoint",
        str(checkpoint),
        "--document-root",
        str(document_root),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--label-studio-url",
        ls.url,
        "--data",
        str(data),
        "--project",
        PROJECT,
        "--cache-dir",
        str(document_root.parent / "cache"),
        "--balance-classes",  # the classes take turns: the plain order can favour one or two
    ]
    with open(log_path, "ab") as handle:
        process = subprocess.Popen(
            command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DemoError(f"the backend exited early; its log:\n{log_tail(log_path)}")
            try:
                if httpx.get(f"{url}/health", timeout=2, follow_redirects=True).is_success:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise DemoError(f"the backend did not answer {url}/health; log:\n{log_tail(log_path)}")
        yield url
    finally:
        stop_process(process, grace_seconds=10)


def robustar_ls_command() -> str:
    """How to call ``robustar-ls`` from any shell: its full path when it is not on the PATH
    (e.g. inside a virtualenv nobody activated)."""
    installed = Path(sys.executable).parent / "robustar-ls"
    on_path = shutil.which("robustar-ls")
    if on_path and Path(on_path).resolve() == installed.resolve():
        return "robustar-ls"
    return str(installed) if installed.is_file() else "robustar-ls"


def next_steps(ls: LabelStudioServer, summary: dict, backend_url: str, work: Path) -> str:
    data = work / "documents" / "patch"
    command = robustar_ls_command()
    return f"""
robustar-ls demo is running.

  Label Studio   {summary.get("project_url", ls.url)}
  login          {ls.username}  /  {ls.password}
  ML backend     {backend_url}   (connected to the project)
  API token      {ls.legacy_token}

What to do next:
  1. Open the project. The "Most influential first" tab lists the training images that drive
     the model's out-of-domain errors first, the classes taking turns; each task shows the
     model's prediction, where it looks (the "Model attention" region and the heatmap beside
     the image) and the influence.
  2. Paint the spurious pixels with the "Spurious" brush (here: the coloured corner patch; the
     key point tool selects all pixels of the clicked colour) and submit; submit a task with
     nothing painted when it shows no patch. About 40 tasks (5 %) from the top of the tab are
     enough. Mask R-CNN pre-annotations appear once COCO weights are in the torch cache
     (README, "No weights").
  3. Retrain: in Label Studio open the project's Settings, then Model, and choose
     "Start Training" in the "..." menu of the model card; or run
       LABEL_STUDIO_API_KEY={ls.legacy_token} {command} sync-train --data {data} \\
         --checkpoint {work / "model.pt"} --label-studio-url {ls.url} --project "{PROJECT}"
     Your masks teach the learned segmenter the patch; it finds the patch on the other
     images, and the classifier is retrained with every such image paired (a few minutes
     on a CPU). Expect the out-of-domain (test) accuracy to rise close to the in-distribution
     (val) one; each version's accuracies:
       {command} history --checkpoint {work / "model.pt"}
     The backend serves the new model version at once, then reruns influence for it by
     itself (progress on its page, {backend_url}/): the "Most influential first" ranks,
     the "Test errors" tab and the predictions of the top tasks follow the new model.

Logs: {ls.log_path}, {work / "backend.log"}.   Ctrl-C stops both servers.
"""


def run_demo(
    cfg: DemoConfig,
    *,
    secret: str = "",
    basic_auth: tuple[str, str] | None = None,
    progress: Callable | None = None,
) -> dict:
    """Run the demo; returns the import summary (and blocks until Ctrl-C when ``cfg.wait``).

    ``secret``: the URL-signing key (ROBUSTAR_LS_SECRET; "" = the key file in the cache);
    ``basic_auth``: the backend's basic-auth login, given to Label Studio with the backend URL;
    ``progress``: a tqdm-like wrapper for the dataset and training bars.
    """
    if not cfg.label_studio_bin or not os.access(cfg.label_studio_bin, os.X_OK):
        raise DemoError(
            f"no Label Studio executable at {cfg.label_studio_bin or '(none given)'}: run "
            "`make demo` (it installs label-studio into .venv-ls) or pass --label-studio-bin"
        )
    work = Path(cfg.workdir).resolve()
    documents = work / "documents"
    data, model = documents / "patch", work / "model.pt"
    prepare_model(cfg, data, model, progress)
    creds = demo_credentials(work / "credentials.json")
    log.info("demo: start Label Studio (the first start migrates its database: minutes)")
    with running_label_studio(
        cfg.label_studio_bin,
        work / "label-studio",
        credentials=creds,
        port=cfg.label_studio_port or free_port(),
        document_root=documents,
        personal_access_token=False,  # the demo uses the legacy token
    ) as ls:
        log.info("demo: Label Studio is up at %s", ls.url)
        with running_backend(
            model, documents, data, cfg.backend_port or free_port(), ls, work / "backend.log"
        ) as backend_url:
            summary = import_and_rank(ls, data, backend_url, work, secret, basic_auth)
            print(next_steps(ls, summary, backend_url, work), flush=True)
            if cfg.wait:
                wait_for_interrupt()
    return summary


def import_and_rank(
    ls: LabelStudioServer,
    data: Path,
    backend_url: str,
    work: Path,
    secret: str,
    basic_auth: tuple[str, str] | None,
) -> dict:
    """Import the project and ask the backend to rank it: the backend scores influence for its
    model version, writes the ranks into the tasks and prefetches the top 100 tasks'
    predictions, as it does after every new model version. The import summary."""
    from robustar_ls.labelstudio.client import connect
    from robustar_ls.labelstudio.project_import import import_project
    from robustar_ls.models.checkpoint import read_version
    from robustar_ls.workflows.prefetch_request import request_prefetch
    from robustar_ls.workflows.project import saliency_links

    label_studio = LabelStudioConfig(
        url=ls.url, api_key=ls.legacy_token, project=PROJECT, document_root=str(ls.document_root)
    )
    client = connect(label_studio.url, label_studio.api_key)
    cache = work / "cache"
    log.info("demo: import the project")
    links = saliency_links(backend_url, secret, cache)
    summary = import_project(
        client,
        label_studio,
        ImportConfig(data=str(data), backend_url=backend_url, cache_dir=str(cache)),
        basic_auth=basic_auth,
        saliency=links,
    )
    log.info("demo: the backend scores influence and orders the tasks")
    request_prefetch(client, summary["project_id"], 100, backend_url, basic_auth)
    wait_for_ranks(backend_url, read_version(work / "model.pt"), basic_auth)
    return summary


def wait_for_ranks(
    backend_url: str, version: str, basic_auth: tuple[str, str] | None, timeout: float = 3600.0
) -> dict:
    """Block until the backend's influence for ``version`` is in the tasks (its ``/health``
    says so), logging each phase; its status."""
    deadline, said = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{backend_url}/health", auth=basic_auth, timeout=10).json()
        except (httpx.HTTPError, ValueError) as err:
            raise DemoError(f"the backend at {backend_url} stopped answering: {err}") from err
        influence = (health.get("prefetch") or {}).get("influence") or {}
        if influence.get("model_version") == version:
            if influence.get("state") in ("done", "current"):
                return influence
            if influence.get("state") == "failed":
                raise DemoError(f"the backend could not rank the tasks: {influence.get('error')}")
            phase = str(influence.get("phase"))
            if phase != said:
                log.info("demo: influence: %s", phase)
                said = phase
        time.sleep(1.0)
    raise DemoError(f"the backend did not rank the tasks within {timeout:.0f} s")


def wait_for_interrupt() -> None:
    """Block until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("\nstopping Label Studio and the backend…", flush=True)

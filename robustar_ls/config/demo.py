"""The built-in benchmark datasets (``robustar-ls make-dataset``) and the demo built on them
(``robustar-ls demo``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SyntheticConfig:
    """A spurious-feature benchmark dataset (``robustar-ls make-dataset``)."""

    kind: str = "patch"  # "patch" | "background" | "digits"
    size: int = 32
    per_class: int | None = None  # None: the kind's calibrated count (data/synthetic.py)
    test_per_class: int | None = None  # None: the kind's default (100; digits 40)
    val_per_class: int | None = None  # None: the kind's default (100; digits 30)
    classes: int | None = None  # None: the kind's default (4; digits 10)
    bias: float = 1.0  # no misaligned image: nothing in the data argues against the shortcut
    spurious_fraction: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class DemoConfig:
    """``robustar-ls demo``: where it works, the ports, the dataset and training sizes."""

    workdir: str = "demo"
    label_studio_bin: str = ""
    label_studio_port: int = 8080
    backend_port: int = 9090
    per_class: int = 200
    epochs: int = 10
    spurious_fraction: float = 0.7
    wait: bool = True  # keep serving until Ctrl-C

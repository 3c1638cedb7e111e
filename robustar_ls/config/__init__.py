"""Typed settings, read once at the entry point and handed to constructors.

A settings file (YAML or TOML) may hold any of the sections below; command-line flags override
it. Secrets (API keys, passwords) are never read from files: only from the environment, by
:func:`secrets_from_env`, called in ``cli/`` (``cli/options.py``).

Every settings dataclass lives in this package, one module per concept (``training``,
``influence``, ``serve``, ``labelstudio``, ``demo``; ``build`` turns files and flags into them,
``environment`` reads the secrets); each is importable from ``robustar_ls.config``.
"""

from robustar_ls.config.build import ConfigError, build, pick, read_settings_file, to_dict
from robustar_ls.config.demo import DemoConfig, SyntheticConfig
from robustar_ls.config.environment import check_basic_auth, secrets_from_env
from robustar_ls.config.influence import InfluenceConfig
from robustar_ls.config.labelstudio import ImportConfig, LabelStudioConfig, SyncConfig
from robustar_ls.config.serve import (
    MaskRCNNConfig,
    PrefetchConfig,
    SaliencyConfig,
    ServeConfig,
    default_cache_dir,
)
from robustar_ls.config.training import (
    FINETUNE_DEFAULTS,
    ModelConfig,
    PairedConfig,
    SpuriousSegmenterConfig,
    TrainConfig,
)

__all__ = [
    "FINETUNE_DEFAULTS",
    "ConfigError",
    "DemoConfig",
    "ImportConfig",
    "InfluenceConfig",
    "LabelStudioConfig",
    "ModelConfig",
    "PairedConfig",
    "PrefetchConfig",
    "SaliencyConfig",
    "MaskRCNNConfig",
    "ServeConfig",
    "SpuriousSegmenterConfig",
    "SyncConfig",
    "SyntheticConfig",
    "TrainConfig",
    "build",
    "check_basic_auth",
    "default_cache_dir",
    "pick",
    "read_settings_file",
    "secrets_from_env",
    "to_dict",
]

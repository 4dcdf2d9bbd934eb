"""The run configuration: its typed sections (schema), their allowed values (ranges), and how a
config is loaded from recipes and overrides and saved (loading). Import names from here."""
from .loading import (RECIPE_META_KEYS, SECTIONS, apply_overrides, checked_config, config_from_dict, config_to_dict,
                      config_to_yaml, list_recipes, load_config, load_yaml, parse_override, read_recipe, recipe_dir,
                      save_config)
from .ranges import BALANCE, PROTOCOLS, Range, check_section, ranged
from .schema import (Config, DataConfig, FinetuneConfig, ModelConfig, OptimConfig, ScheduleConfig,
                     TrainConfig)

__all__ = ["BALANCE", "PROTOCOLS", "RECIPE_META_KEYS", "SECTIONS", "Config", "DataConfig", "FinetuneConfig", "ModelConfig",
           "OptimConfig", "Range", "ScheduleConfig", "TrainConfig", "apply_overrides", "check_section",
           "checked_config", "config_from_dict", "config_to_dict", "config_to_yaml", "list_recipes", "load_config",
           "load_yaml", "parse_override", "ranged", "read_recipe", "recipe_dir", "save_config"]

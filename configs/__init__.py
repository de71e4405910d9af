"""The YAML configs shipped with EmoMA, found by name (`--config context`) from any folder."""

"""rlprune's Hydra configs. Importing the package registers the schema they are checked against."""

import rlprune.config  # noqa: F401  (stores ``rlprune_schema`` in Hydra's ConfigStore)

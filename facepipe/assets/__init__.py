"""Dagster assets and checks, one module per stage (the role factory lives in prep.py)."""

from facepipe.assets.curation import build_curation_asset
from facepipe.assets.identity import identity_model, identity_profile, identity_profile_is_usable
from facepipe.assets.pair import PAIR_ASSETS, PAIR_CHECKS
from facepipe.assets.prep import build_prep_assets
from facepipe.assets.xseg import target_masks, xseg_holdout_iou, xseg_model
from facepipe.partitions import ROLES

ASSETS = [*(a for role in ROLES for a in [*build_prep_assets(role), build_curation_asset(role)]), identity_profile, identity_model, xseg_model,
          target_masks, *PAIR_ASSETS]
ASSET_CHECKS = [identity_profile_is_usable, xseg_holdout_iou, *PAIR_CHECKS]

"""Where MobileViT looks: capture attention in one forward pass (`capture`), turn it into maps
(`context_score_maps` for MobileViTv2, `attention_maps` for v1) and draw figures
(`npvit.viz.figures`, used by ``npvit scoremap``), and measure the share of it inside an
object's box (`score_mass_in_box`, `npvit.viz.mass`)."""
from .capture import AttentionRecord, attention_blocks, capture
from .maps import (AttentionMaps, ScoreMap, attention_maps, colorize, context_score_maps,
                   head_attention_maps, heatmap, min_max_normalise, model_input, pixel_shuffle,
                   query_patch, run_with_capture, score_maps, upsample_nearest)
from .mass import BoxMass, box_area_share, box_masses, mass_in_box, mean_share, score_mass_in_box

"""Plotting for the workbook: pure functions that return a matplotlib ``Figure`` (no pyplot state).

``ssmt_lib.viz.tokens`` shows how an image becomes tokens (eq. 1); ``ssmt_lib.viz.attention``
attention maps, query masks and rollout from a recording (eq. 2-9); ``ssmt_lib.viz.maps`` a trained
model's attention over its test images; ``ssmt_lib.viz.data`` the phantom and the datasets,
``ssmt_lib.viz.training`` runs, ``ssmt_lib.viz.experiments`` sweeps, ``ssmt_lib.viz.cam`` what a
classifier looks at. ``ssmt_lib.viz.common`` holds the drawing helpers they share. The recorders
(forward hooks) live in :mod:`ssmt_lib.recording`. Everything public is re-exported here::

    from ssmt_lib.viz import record_attention, show_attention_heads, attention_rollout
"""
from ssmt_lib.recording import record_attention, record_attention_masks
from ssmt_lib.viz.architecture import architecture_map
from ssmt_lib.viz.attention import (
    attention_rollout,
    query_attention,
    show_attention_heads,
    show_attention_map,
    show_coarse_to_fine,
    show_overlays,
    show_query_masks,
    vit_attention,
)
from ssmt_lib.viz.cam import grad_cam, occlusion_map, show_cam
from ssmt_lib.viz.common import level_grid
from ssmt_lib.viz.data import (
    phantom_frame,
    plot_dataset_stats,
    show_anatomy,
    show_augmentations,
    show_gallery,
    show_samples,
    speckle_view,
)
from ssmt_lib.viz.maps import (
    AttentionRecording,
    attention_mass,
    collect_attention,
    find_failure_cases,
    show_attention_explorer,
    show_cross_attention,
    show_failure_cases,
    show_vit_attention,
    upsample_map,
)
from ssmt_lib.viz.tokens import (
    pos_embed_similarity,
    show_feature_maps,
    show_patch_grid,
    show_pos_embed_similarity,
    show_token_grid,
)
from ssmt_lib.viz.training import (
    LOSS_TERMS,
    compare_runs,
    history_frame,
    metrics_table,
    plot_history,
    show_predictions,
    show_reconstructions,
)

__all__ = [
    "architecture_map",
    "attention_rollout", "level_grid", "pos_embed_similarity", "query_attention", "record_attention",
    "record_attention_masks", "show_attention_heads", "show_attention_map", "show_coarse_to_fine",
    "show_feature_maps", "show_overlays", "show_patch_grid", "show_pos_embed_similarity", "show_query_masks",
    "show_token_grid", "vit_attention",
    "phantom_frame", "plot_dataset_stats", "show_anatomy", "show_augmentations", "show_gallery", "show_samples",
    "speckle_view", "grad_cam", "occlusion_map", "show_cam",
    "LOSS_TERMS", "compare_runs", "history_frame", "metrics_table", "plot_history", "show_predictions",
    "show_reconstructions",
    "AttentionRecording", "attention_mass", "collect_attention", "find_failure_cases",
    "show_attention_explorer", "show_cross_attention", "show_failure_cases", "show_vit_attention", "upsample_map",
]

"""Pure NumPy ops. Each is a pair: ``op_forward(x, ...) -> (y, cache)`` and
``op_backward(dy, cache) -> dx`` (plus the parameter gradients, for ops that have parameters)."""
from .activation import (dropout2d_forward, dropout_backward, dropout_forward, gelu_backward,
                         gelu_forward, relu_backward, relu_forward, silu_backward, silu_forward,
                         softmax_backward, softmax_forward)
from .attention import (linformer_attention_backward, linformer_attention_forward,
                        multi_head_attention_backward, multi_head_attention_forward,
                        separable_attention_backward, separable_attention_forward)
from .attention_zoo import (biased_attention_backward, biased_attention_forward,
                            cascaded_group_attention_backward, cascaded_group_attention_forward,
                            lookup_cross_attention_backward, lookup_cross_attention_forward,
                            lookup_gather_backward, lookup_gather_forward, lookup_scatter_backward,
                            lookup_scatter_forward,
                            mpc_attention_backward, mpc_attention_forward, relative_position_index,
                            tinyvit_attention_backward, tinyvit_attention_forward)
from .conv import col2im, conv2d_backward, conv2d_forward, im2col
from .linear import linear_backward, linear_forward
from .loss import (cross_entropy_backward, cross_entropy_forward, log_softmax,
                   pixel_cross_entropy_backward, pixel_cross_entropy_forward,
                   smooth_l1_backward, smooth_l1_forward)
from .norm import (batchnorm2d_backward, batchnorm2d_forward, fold_batchnorm, groupnorm_backward,
                   groupnorm_forward, layernorm_backward, layernorm_forward)
from .patches import (fold_v1, fold_v1_backward, fold_v1_forward, fold_v2, fold_v2_backward,
                      fold_v2_forward, unfold_v1, unfold_v1_backward, unfold_v1_forward,
                      unfold_v2, unfold_v2_backward, unfold_v2_forward)
from .pool import (adaptive_avg_pool_backward, adaptive_avg_pool_forward, adaptive_pool_matrix,
                   global_avg_pool_backward, global_avg_pool_forward)
from .resize import (interpolation_matrix, resize_bilinear_backward, resize_bilinear_forward,
                     resize_nearest)
from .windows import (window_merge, window_merge_backward, window_merge_forward, window_partition,
                      window_partition_backward, window_partition_forward)

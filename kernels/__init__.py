from kernels.topk_select import topk_select, topk_select_reference
from kernels.score_select import (oracle_select, score_and_select,
                                  score_and_select_reference)

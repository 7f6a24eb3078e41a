"""mylosses: every torch.nn loss written from scratch as an autograd.Function.

``mylosses.<Name>`` replaces ``torch.nn.<Name>``, ``mylosses.functional.<fn>`` replaces
``torch.nn.functional.<fn>``; ``swap_modules`` and ``patch_torch`` put them into existing code.
(Re-exports only: each loss lives in its own file under ``mylosses/losses/``.)
"""

from mylosses import functional
from mylosses._patch import patch_torch, swap_modules
from mylosses.losses.bce import BCELoss
from mylosses.losses.bce_with_logits import BCEWithLogitsLoss
from mylosses.losses.cosine_embedding import CosineEmbeddingLoss
from mylosses.losses.cross_entropy import CrossEntropyLoss
from mylosses.losses.ctc import CTCLoss
from mylosses.losses.gaussian_nll import GaussianNLLLoss
from mylosses.losses.hinge_embedding import HingeEmbeddingLoss
from mylosses.losses.huber import HuberLoss
from mylosses.losses.kl_div import KLDivLoss
from mylosses.losses.l1 import L1Loss
from mylosses.losses.margin_ranking import MarginRankingLoss
from mylosses.losses.mse import MSELoss
from mylosses.losses.multi_margin import MultiMarginLoss
from mylosses.losses.multilabel_margin import MultiLabelMarginLoss
from mylosses.losses.multilabel_soft_margin import MultiLabelSoftMarginLoss
from mylosses.losses.nll import NLLLoss
from mylosses.losses.poisson_nll import PoissonNLLLoss
from mylosses.losses.smooth_l1 import SmoothL1Loss
from mylosses.losses.soft_margin import SoftMarginLoss
from mylosses.losses.triplet_margin import TripletMarginLoss
from mylosses.losses.triplet_margin_with_distance import TripletMarginWithDistanceLoss

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "CTCLoss",
    "CosineEmbeddingLoss",
    "CrossEntropyLoss",
    "GaussianNLLLoss",
    "HingeEmbeddingLoss",
    "HuberLoss",
    "KLDivLoss",
    "L1Loss",
    "MSELoss",
    "MarginRankingLoss",
    "MultiLabelMarginLoss",
    "MultiLabelSoftMarginLoss",
    "MultiMarginLoss",
    "NLLLoss",
    "PoissonNLLLoss",
    "SmoothL1Loss",
    "SoftMarginLoss",
    "TripletMarginLoss",
    "TripletMarginWithDistanceLoss",
    "functional",
    "patch_torch",
    "swap_modules",
]
__version__ = "0.1.0"

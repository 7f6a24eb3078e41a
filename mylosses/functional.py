"""Drop-in replacements for the loss functions of ``torch.nn.functional`` (re-exports only)."""

from mylosses.losses.bce import binary_cross_entropy
from mylosses.losses.bce_with_logits import binary_cross_entropy_with_logits
from mylosses.losses.cosine_embedding import cosine_embedding_loss
from mylosses.losses.cross_entropy import cross_entropy
from mylosses.losses.ctc import ctc_loss
from mylosses.losses.gaussian_nll import gaussian_nll_loss
from mylosses.losses.hinge_embedding import hinge_embedding_loss
from mylosses.losses.huber import huber_loss
from mylosses.losses.kl_div import kl_div
from mylosses.losses.l1 import l1_loss
from mylosses.losses.margin_ranking import margin_ranking_loss
from mylosses.losses.mse import mse_loss
from mylosses.losses.multi_margin import multi_margin_loss
from mylosses.losses.multilabel_margin import multilabel_margin_loss
from mylosses.losses.multilabel_soft_margin import multilabel_soft_margin_loss
from mylosses.losses.nll import nll_loss
from mylosses.losses.poisson_nll import poisson_nll_loss
from mylosses.losses.smooth_l1 import smooth_l1_loss
from mylosses.losses.soft_margin import soft_margin_loss
from mylosses.losses.triplet_margin import triplet_margin_loss
from mylosses.losses.triplet_margin_with_distance import triplet_margin_with_distance_loss

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cosine_embedding_loss",
    "cross_entropy",
    "ctc_loss",
    "gaussian_nll_loss",
    "hinge_embedding_loss",
    "huber_loss",
    "kl_div",
    "l1_loss",
    "margin_ranking_loss",
    "mse_loss",
    "multi_margin_loss",
    "multilabel_margin_loss",
    "multilabel_soft_margin_loss",
    "nll_loss",
    "poisson_nll_loss",
    "smooth_l1_loss",
    "soft_margin_loss",
    "triplet_margin_loss",
    "triplet_margin_with_distance_loss",
]

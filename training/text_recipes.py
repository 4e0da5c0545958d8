"""Text recipes: trained on cached features of the teacher and the encoder, no images and no UNet.

* ``altclip-kd`` — AltDiffusion/AltCLIP teacher learning: MSE between the adapter's output for the target text
  and the teacher's for the English text, on the pooled vector and on the tokens; with ``contrastive_weight``
  (0 here, the paper's loss; 1 in BabelCLIP's training defaults) plus InfoNCE between the batch's pooled vectors.
* ``mclip-trikd`` — mCLIP triangle distillation: symmetric InfoNCE between the adapter's pooled vector and the
  teacher's (L_TTC), plus image<->text InfoNCE (L_ITC) when image embeddings are given: ``L_ITC + 0.1 * L_TTC``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidDataError
from ..models.adapters import masked_mean
from .recipe_base import Recipe, need

__all__ = ["AltClipKD", "MClipTriKD", "info_nce"]


class AltClipKD(Recipe):
    name = "altclip-kd"
    approach = "AltDiffusion/AltCLIP teacher learning"
    loss_formula = "MSE(pooled) + MSE(tokens) to the teacher's English encoding (+ w * InfoNCE(pooled))"

    def __init__(self, token_weight: float = 1.0, contrastive_weight: float = 0.0, temperature: float = 0.05):
        self.token_weight, self.contrastive_weight, self.temperature = token_weight, contrastive_weight, temperature

    def teacher_layout(self, adapter):
        # token-aligned adapters are matched on the mean token only
        return "mean" if adapter.token_aligned else "tokens"

    def loss(self, adapter, batch, unet=None):
        need(batch, "teacher_pooled", recipe=self.name)
        token_aligned = getattr(adapter, "module", adapter).token_aligned  # (DistributedDataParallel wraps it)
        if token_aligned:
            if batch.teacher_cond is None and batch.teacher_mean is None:
                need(batch, "teacher_cond", recipe=self.name)
        else:
            need(batch, "teacher_cond", recipe=self.name)  # the resampler's tokens are matched one by one
        out = adapter(batch.hidden, batch.mask)
        pooled_loss = F.mse_loss(out.pooled.float(), batch.teacher_pooled.float())
        if not token_aligned and out.cond.shape[1] == batch.teacher_cond.shape[1]:
            # fixed-length adapters (resampler, 77 queries): token by token
            token_loss = F.mse_loss(out.cond.float(), batch.teacher_cond.float())
        else:
            # token-aligned adapters follow the encoder's tokenization, which has no 1:1 map to CLIP's
            # tokens: match the mean token, the part of the sequence cross-attention averages over
            token_loss = F.mse_loss(masked_mean(out.cond.float(), out.mask), batch.teacher_token_mean().float())
        loss = pooled_loss + self.token_weight * token_loss
        terms = {"pooled_mse": pooled_loss.item(), "token_mse": token_loss.item()}
        if self.contrastive_weight:  # rank each text's own English first among the batch's (what R@1 measures)
            nce = info_nce(out.pooled, batch.teacher_pooled, self.temperature)
            loss = loss + self.contrastive_weight * nce
            terms["pooled_nce"] = nce.item()
        return loss, terms


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned batches ``a`` and ``b``.

    Rows whose ``b`` is the same (the translations or code-switched copies of one English prompt share its
    teacher target) are not one another's negatives: their off-diagonal logits are left out, in both
    directions. Counting them would push a translation's output away from its own English's target.
    """
    logits = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T / temperature
    n = a.shape[0]
    twins = (b.unsqueeze(1) == b.unsqueeze(0)).all(-1)  # [n, n] identical targets
    twins.fill_diagonal_(False)
    logits = logits.masked_fill(twins, float("-inf"))
    target = torch.arange(n, device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class MClipTriKD(Recipe):
    name = "mclip-trikd"
    approach = "mCLIP triangle cross-modal knowledge distillation"
    loss_formula = "L_ITC + 0.1 * L_TTC (symmetric InfoNCE; L_TTC alone without images)"
    uses_image_embeddings = True

    def __init__(self, temperature: float = 0.05, ttc_weight: float = 0.1):
        self.temperature, self.ttc_weight = temperature, ttc_weight

    def teacher_layout(self, adapter):
        return "mean"  # only the pooled vector is read

    def loss(self, adapter, batch, unet=None):
        need(batch, "teacher_pooled", recipe=self.name)
        if batch.hidden.shape[0] < 2:
            raise InvalidDataError("mclip-trikd contrasts examples within a batch: use a batch size of 2 or more.")
        out = adapter(batch.hidden, batch.mask)
        ttc = info_nce(out.pooled, batch.teacher_pooled, self.temperature)
        if batch.image_embeds is None:
            return ttc, {"ttc": ttc.item()}
        itc = info_nce(out.pooled, batch.image_embeds, self.temperature)
        return itc + self.ttc_weight * ttc, {"itc": itc.item(), "ttc": ttc.item()}

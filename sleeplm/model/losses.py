"""SleepLM training losses: contrastive (CLIP InfoNCE), captioning and masked reconstruction.

Modelled on open_clip's ``loss.py`` (``gather_features``, ``ClipLoss``, ``CoCaLoss``):

* :func:`gather_features` collects signal / text embeddings from every rank of a
  ``torch.distributed`` job (with gradients through
  ``torch.distributed.nn.functional.all_gather`` when ``gather_with_grad``); it is the identity
  when ``torch.distributed`` is not initialised or the world has one process.
* :class:`ClipLoss` is the symmetric InfoNCE loss ``(CE(s·I·Tᵀ) + CE(s·T·Iᵀ)) / 2`` on
  L2-normalised embeddings, ``s`` the (learned, clamped to <= 100) logit scale. With
  ``local_loss`` each rank scores its own rows against the gathered columns and the labels are
  offset by ``rank * local_batch``. Given ``keys`` (one integer per pair, equal for equal
  texts) it is the multi-positive form: the target of a row is spread evenly over every column
  with the same key, so two epochs paired with the same short text ("no arousal") are not
  pushed apart; with distinct keys it is exactly the plain loss.
* :class:`CaptionLoss` is token cross-entropy that ignores padding.
* :func:`reconstruction_loss` is the MSE over the masked patches only.
* :class:`SleepLMLoss` weights and sums them; a weight of 0 removes its term (it is not even
  computed and reported as 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["gather_features", "ClipLoss", "CaptionLoss", "reconstruction_loss", "SleepLMLoss",
           "MAX_LOGIT_SCALE", "dist_info"]

#: CLIP clamps the learned temperature so that logits are scaled by at most 100.
MAX_LOGIT_SCALE = 100.0


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when torch.distributed is absent or not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_features(image_features: Tensor, text_features: Tensor, *,
                    gather_with_grad: bool = True, local_loss: bool = True
                    ) -> tuple[Tensor, Tensor]:
    """All-gather signal ("image") and text embeddings over the ranks: ``[world * B, E]`` each.

    Identity without an initialised process group (or with a world of one). Without
    ``gather_with_grad`` the gathered copies carry no gradient; then, unless ``local_loss``,
    this rank's slot is replaced by its own (grad-carrying) features, as in open_clip.
    """
    rank, world_size = dist_info()
    if world_size == 1:
        return image_features, text_features
    if gather_with_grad:
        import torch.distributed.nn.functional as dist_fn

        all_image = torch.cat(dist_fn.all_gather(image_features), dim=0)
        all_text = torch.cat(dist_fn.all_gather(text_features), dim=0)
        return all_image, all_text
    gathered_image = [torch.zeros_like(image_features) for _ in range(world_size)]
    gathered_text = [torch.zeros_like(text_features) for _ in range(world_size)]
    torch.distributed.all_gather(gathered_image, image_features)
    torch.distributed.all_gather(gathered_text, text_features)
    if not local_loss:  # keep the gradient of this rank's own features
        gathered_image[rank] = image_features
        gathered_text[rank] = text_features
    return torch.cat(gathered_image, dim=0), torch.cat(gathered_text, dim=0)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE between matched signal and text embeddings (row i matches row i).

    Parameters
    ----------
    local_loss : bool
        Distributed only: score local rows against all gathered columns (memory O(B·world·B))
        instead of the full gathered square matrix.
    gather_with_grad : bool
        Distributed only: back-propagate through the gathered features of other ranks.
    """

    def __init__(self, local_loss: bool = True, gather_with_grad: bool = True):
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad

    def get_logits(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor
                   ) -> tuple[Tensor, Tensor]:
        _, world_size = dist_info()
        if world_size > 1:
            all_image, all_text = gather_features(
                image_features, text_features,
                gather_with_grad=self.gather_with_grad, local_loss=self.local_loss)
            if self.local_loss:
                return (logit_scale * image_features @ all_text.T,
                        logit_scale * text_features @ all_image.T)
            logits_per_image = logit_scale * all_image @ all_text.T
            return logits_per_image, logits_per_image.T
        logits_per_image = logit_scale * image_features @ text_features.T
        return logits_per_image, logits_per_image.T

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float,
                keys: Tensor | None = None, extra_text_features: Tensor | None = None,
                extra_keys: Tensor | None = None, keysets: Tensor | None = None) -> Tensor:
        """Mean of the two directions' cross-entropies. ``logit_scale`` is the scale itself
        (already ``exp``-ed), clamped here to :data:`MAX_LOGIT_SCALE`. ``keys`` (int ``[B]``,
        optional): pairs with equal keys are positives of each other. ``extra_text_features``
        ``[M, E]`` with ``extra_keys`` ``[M]`` (the same on every rank; needs ``keys``): more
        text columns for the signal-to-text direction only, negatives unless their key equals
        a signal's key. ``keysets`` ``[B, K]`` (needs ``keys``; -1 pads): the keys of every
        text true of each signal (its own key among them): text ``j`` is a positive of signal
        ``i`` when ``key_j`` is in ``keysets_i``, in both directions."""
        scale = torch.as_tensor(logit_scale, dtype=image_features.dtype,
                                device=image_features.device).clamp(max=MAX_LOGIT_SCALE)
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, scale)
        n = logits_per_image.shape[0]
        rank, world_size = dist_info()
        if extra_text_features is not None and (keys is None or extra_keys is None):
            raise ValueError("extra text columns need keys for the pairs and for the columns")
        if keys is not None:
            keys = keys.to(image_features.device).reshape(-1)
            all_keys = keys
            if world_size > 1:
                gathered = [torch.zeros_like(keys) for _ in range(world_size)]
                torch.distributed.all_gather(gathered, keys)
                all_keys = torch.cat(gathered)
            local = world_size > 1 and self.local_loss
            rows = keys if local else all_keys
            if keysets is None:
                target = (rows[:, None] == all_keys[None, :]).float()
                target_t = target
                row_sets = rows[:, None]
            else:
                ks = keysets.to(image_features.device).reshape(keys.shape[0], -1)
                all_ks = ks
                if world_size > 1:
                    gathered_ks = [torch.zeros_like(ks) for _ in range(world_size)]
                    torch.distributed.all_gather(gathered_ks, ks)
                    all_ks = torch.cat(gathered_ks)
                row_sets = ks if local else all_ks  # [R, K], signals as rows
                target = (row_sets[:, :, None] == all_keys[None, None, :]).any(1).float()
                target_t = (all_ks[None, :, :] == rows[:, None, None]).any(2).float()
            target_t = target_t / target_t.sum(1, keepdim=True)
            if extra_text_features is not None:
                images = image_features if (world_size > 1 and self.local_loss) else \
                    gather_features(image_features, text_features,
                                    gather_with_grad=self.gather_with_grad,
                                    local_loss=self.local_loss)[0]
                logits_per_image = torch.cat(
                    [logits_per_image, scale * images @ extra_text_features.T], dim=1)
                extra_keys = extra_keys.to(image_features.device).reshape(-1)
                extra_pos = (row_sets[:, :, None] == extra_keys[None, None, :]).any(1)
                target = torch.cat([target, extra_pos.float()], 1)
            target_i = target / target.sum(1, keepdim=True)
            return (F.cross_entropy(logits_per_image.float(), target_i)
                    + F.cross_entropy(logits_per_text.float(), target_t)) / 2
        labels = torch.arange(n, device=image_features.device)
        if world_size > 1 and self.local_loss:
            labels = labels + n * rank
        return (F.cross_entropy(logits_per_image.float(), labels)
                + F.cross_entropy(logits_per_text.float(), labels)) / 2


class CaptionLoss(nn.Module):
    """Next-token cross-entropy over ``logits [B, L, V]`` and ``targets [B, L]``, ignoring
    ``pad_id`` targets. Returns 0 (with a graph) when no target is a real token."""

    def __init__(self, pad_id: int = 0):
        super().__init__()
        self.pad_id = pad_id

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        valid = targets != self.pad_id
        if not bool(valid.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                               targets.reshape(-1), ignore_index=self.pad_id)


def reconstruction_loss(pred: Tensor, target: Tensor, masked: Tensor) -> Tensor:
    """MSE between ``pred`` and ``target`` ``[..., L]`` over the items where ``masked [...]`` is
    True (mean over masked items and samples); 0 (with a graph) when nothing is masked."""
    m = masked.to(pred.dtype)
    n = m.sum() * pred.shape[-1]
    se = ((pred.float() - target.float()) ** 2).sum(-1)
    return (se * m).sum() / n.clamp(min=1.0)


class SleepLMLoss(nn.Module):
    """``w_c · contrastive + w_cap · caption + w_r · reconstruction``.

    A zero weight skips its term (reported as a zero tensor); missing inputs for a term with a
    positive weight are an error. Returns a dict of tensors: ``loss``, ``contrastive``,
    ``caption``, ``reconstruction``.
    """

    def __init__(self, contrastive_weight: float = 1.0, caption_weight: float = 1.0,
                 reconstruction_weight: float = 1.0, pad_id: int = 0, local_loss: bool = True,
                 gather_with_grad: bool = True):
        super().__init__()
        for name, w in (("contrastive", contrastive_weight), ("caption", caption_weight),
                        ("reconstruction", reconstruction_weight)):
            if not (w >= 0 and math.isfinite(w)):
                raise ValueError(f"{name} weight must be finite and >= 0, got {w}")
        self.contrastive_weight = contrastive_weight
        self.caption_weight = caption_weight
        self.reconstruction_weight = reconstruction_weight
        self.clip = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad)
        self.caption = CaptionLoss(pad_id)
        #: Weights of the texts of a multi-text contrastive loss (``[S]``; None = their mean).
        self.text_weights: tuple[float, ...] | None = None

    def forward(self, *, image_features: Tensor | None = None,
                text_features: Tensor | None = None, logit_scale: Tensor | float = 1.0,
                logits: Tensor | None = None, targets: Tensor | None = None,
                recon_pred: Tensor | None = None, recon_target: Tensor | None = None,
                recon_mask: Tensor | None = None, text_keys: Tensor | None = None,
                extra_text_features: Tensor | None = None, extra_keys: Tensor | None = None,
                keysets: Tensor | None = None) -> dict[str, Tensor]:
        """``extra_text_features``/``extra_keys`` (extra negative text columns) and
        ``keysets`` (every key true of each signal) apply to the **last** contrastive text
        (:meth:`ClipLoss.forward`)."""
        ref = next(t for t in (image_features, logits, recon_pred) if t is not None)
        zero = ref.new_zeros(())
        out = {"contrastive": zero, "caption": zero, "reconstruction": zero}
        total = zero
        if self.contrastive_weight > 0:
            if image_features is None or text_features is None:
                raise ValueError("contrastive weight > 0 needs image and text features")
            if text_features.dim() == 3:  # [S, B, E]: several texts per signal, (weighted) mean
                S = text_features.shape[0]
                keys = [None] * S if text_keys is None else list(text_keys.reshape(-1, S).T)
                terms = torch.stack([
                    self.clip(image_features, t, logit_scale, k,
                              *((extra_text_features, extra_keys, keysets) if j == S - 1
                                else ()))
                    for j, (t, k) in enumerate(zip(text_features, keys))])
                w = self.text_weights
                if w is not None and len(w) != S:
                    raise ValueError(f"{len(w)} contrastive text weights for {S} texts")
                out["contrastive"] = (terms.mean() if w is None else
                                      (terms * terms.new_tensor(w)).sum() / float(sum(w)))
            else:
                out["contrastive"] = self.clip(image_features, text_features, logit_scale,
                                               None if text_keys is None
                                               else text_keys.reshape(-1),
                                               extra_text_features, extra_keys, keysets)
            total = total + self.contrastive_weight * out["contrastive"]
        if self.caption_weight > 0:
            if logits is None or targets is None:
                raise ValueError("caption weight > 0 needs logits and targets")
            out["caption"] = self.caption(logits, targets)
            total = total + self.caption_weight * out["caption"]
        if self.reconstruction_weight > 0:
            if recon_pred is None or recon_target is None or recon_mask is None:
                raise ValueError("reconstruction weight > 0 needs prediction, target and mask")
            out["reconstruction"] = reconstruction_loss(recon_pred, recon_target, recon_mask)
            total = total + self.reconstruction_weight * out["reconstruction"]
        out["loss"] = total
        return out

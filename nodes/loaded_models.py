"""The checkpoint the user has loaded in ComfyUI, as training needs it: CLIP as teacher, MODEL as frozen UNet, VAE latents."""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Iterator

import torch

import comfy.model_management as mm

from ..errors import UnsupportedModelError
from ..models.adapter_file import tensor_hash
from ..models.families import size_conditioning_ids
from ..models.teacher import TeacherOutput
from . import comfy_runtime as runtime


class ComfyClipTeacher:
    """The CLIP object of a graph as teacher: whatever CLIPSetLastLayer and LoRA did to it is honoured."""

    def __init__(self, clip):
        self.clip = clip
        self.family = runtime.clip_family(clip)
        patches = getattr(clip.patcher, "patches", {}) or {}
        described = sorted((k, len(v), str([p[0] for p in v])) for k, v in patches.items())
        h = hashlib.sha256(tensor_hash(clip.cond_stage_model.state_dict()).encode())
        h.update(json.dumps([described, getattr(clip, "layer_idx", None)], default=str).encode())
        self.fingerprint = h.hexdigest()[:16]
        self.clip_skip = getattr(clip, "layer_idx", None)

    def encode(self, texts) -> TeacherOutput:
        conds, pooleds = [], []
        for text in texts:
            cond, pooled, segments = runtime.clip_encode_segments(self.clip, text, self.family)
            conds.append(self.family.from_host(cond.float().cpu(), segments).clone())  # clone: out of inference mode
            pooleds.append(pooled.float().cpu().clone())
        return TeacherOutput(torch.cat(conds), torch.cat(pooleds))


#: ComfyUI's prediction classes (``comfy.model_sampling``) the UNet recipes train through, as the core names them.
#: EDM, X0 and the rest subclass these or stand apart; they are refused, as are schedules other than the discrete
#: 1000-step one (the UNet is called with its integer timesteps) and, for CONST (rectified flow), other than SD3's
#: and Flux's (called with the noise level times their multiplier, as their samplers do).
PREDICTIONS = {"EPS": "eps", "V_PREDICTION": "v"}
OTHER_PREDICTIONS = {"EDM", "X0", "IMG_TO_IMG", "CONST", "COSMOS_RFLOW"}
OTHER_SCHEDULES = {"ModelSamplingDiscreteDistilled", "ModelSamplingDiscreteEDM", "StableCascadeSampling"}
FLOW_SCHEDULES = {"ModelSamplingFlux", "ModelSamplingDiscreteFlow"}


def prediction_of(sampling) -> str | None:
    """``"eps"``, ``"v"`` or ``"flow"`` for a ComfyUI ``model_sampling`` object (the one patch nodes such as
    ModelSamplingDiscrete replace), from its classes; None for any other prediction or schedule."""
    names = {cls.__name__ for cls in type(sampling).__mro__}
    if "CONST" in names and names & FLOW_SCHEDULES:
        return "flow"
    if "ModelSamplingDiscrete" not in names or names & (OTHER_PREDICTIONS | OTHER_SCHEDULES):
        return None
    return next((PREDICTIONS[n] for n in ("V_PREDICTION", "EPS") if n in names), None)


def _model_sampling(model):
    """The MODEL's sampling object with the user's patches (ModelSamplingDiscrete & co.) applied; ComfyUI before
    get_model_object() (2024) keeps them in ``object_patches``."""
    if hasattr(model, "get_model_object"):
        return model.get_model_object("model_sampling")
    return getattr(model, "object_patches", {}).get("model_sampling", model.model.model_sampling)


class ComfyUNet:
    """A ComfyUI MODEL as the frozen denoiser of the UNet recipes: a noise- or v-predicting UNet, or SD3's / Flux's
    rectified-flow transformer. ``family``: the conditioning's family, whose head layout (the adapter's and the
    teacher cache's) becomes the layout the denoiser reads."""

    def __init__(self, model, family=None):
        sampling = _model_sampling(model)
        self.family = family
        self.sampling = sampling
        self.prediction = prediction_of(sampling)
        if self.prediction is None:
            kinds = " + ".join(c.__name__ for c in type(sampling).__mro__[1:] if c.__module__.startswith("comfy"))
            raise UnsupportedModelError(
                f"The connected MODEL samples as {kinds or type(sampling).__name__}; the UNet recipes (pea, mulan, "
                f"iap) train through UNets with the discrete 1000-step schedule that predict the noise (eps) or v, "
                f"and through SD3's and Flux's rectified-flow transformers. Connect the checkpoint's own MODEL "
                f"output (or one patched by ModelSamplingDiscrete to eps or v_prediction), or use a text-only "
                f"recipe.")
        self.patcher = model
        mm.load_models_gpu([model])
        self.base = model.model
        self.net = model.model.diffusion_model
        self.alphas_cumprod = None if self.prediction == "flow" else (1 / (1 + sampling.sigmas.float() ** 2)).cpu()
        self.device = self.patcher.load_device
        self.dtype = model.model.get_dtype()
        # ComfyUI loads weights inside inference mode; autograd cannot save such tensors for the backward
        # pass that reaches the adapter, so the UNet runs on normal copies (made once per training run).
        # Detached: ComfyUI's parameters keep requires_grad=True, and a copy that required grad made every
        # backward pass compute gradients for all of the UNet's weights (twice the time, several GB more).
        with torch.inference_mode(False):
            self.state = {k: (v.detach().clone() if v.is_inference() else v.detach())
                          for k, v in [*self.net.named_parameters(), *self.net.named_buffers()]}

    def predict(self, latents, timesteps, cond, pooled=None):
        if self.family is not None:  # head layout -> what the denoiser reads (the identity but for SD3)
            cond = self.family.to_host(cond)[0]
        kwargs = {}
        if self.prediction == "flow":  # SD3 / Flux: pooled vector as y, the noise level as their samplers pass it
            timesteps = self.sampling.timestep(timesteps.float()).to(latents.device)
            kwargs["y"] = pooled.to(latents.device, self.dtype) if pooled is not None else None
            if getattr(getattr(self.net, "params", None), "guidance_embed", False):  # Flux-dev: distilled guidance
                value = (self.family.guidance if self.family is not None else None) or 3.5
                kwargs["guidance"] = torch.full((latents.shape[0],), value, device=latents.device, dtype=self.dtype)
        elif getattr(self.net, "num_classes", None) is not None and pooled is not None:  # size-conditioned: adm
            h, w, top, left, target_h, target_w = size_conditioning_ids(latents.shape[-2] * 8, latents.shape[-1] * 8)
            adm = self.base.encode_adm(pooled_output=pooled, width=w, height=h, crop_w=left, crop_h=top,
                                       target_width=target_w, target_height=target_h)
            kwargs["y"] = adm.to(latents.device, self.dtype)
        args = (latents.to(self.dtype), timesteps)  # positional: the UNet names it timesteps, Flux timestep
        kwargs.update(context=cond.to(self.dtype))
        if not torch.is_grad_enabled():
            return torch.func.functional_call(self.net, self.state, args, kwargs).float()
        # ComfyUI's UNet adds residuals in place (x += ...) after the tensors were saved for the backward pass;
        # saving copies keeps the gradient to the adapter correct.
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
            return torch.func.functional_call(self.net, self.state, args, kwargs).float()

    def _modules(self, kind):
        """``(module, which output)`` pairs: for tuple outputs, the index of the image stream."""
        if self.prediction == "flow":
            if kind != "blocks":
                raise UnsupportedModelError(
                    "The iap recipe compares the denoiser's cross-attention outputs, and SD3's and Flux's "
                    "transformers have none: they attend jointly over text and image tokens. Use pea or mulan "
                    "(or a text recipe) for them.")
            if hasattr(self.net, "double_blocks"):  # Flux: (img, txt); single blocks mix both, left out
                return [(b, 0) for b in self.net.double_blocks]
            return [(b, 1) for b in self.net.joint_blocks]  # MMDiT: (context, x)
        if kind == "blocks":
            # ComfyUI runs the layers of each TimestepEmbedSequential one by one, so hook each block's last layer
            return [(block[-1], 0) for block in (*self.net.input_blocks, self.net.middle_block,
                                                 *self.net.output_blocks)]
        return [(m, 0) for name, m in self.net.named_modules() if name.endswith("attn2")]

    @contextlib.contextmanager
    def capture(self, kind: str) -> Iterator[list]:
        found: list = []

        def hook(index):
            return lambda m, a, o: found.append(o[index] if isinstance(o, tuple) else o)
        handles = [m.register_forward_hook(hook(i)) for m, i in self._modules(kind)]
        try:
            yield found
        finally:
            for h in handles:
                h.remove()


def encode_images(vae, model, images: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, 3] -> model-space latents (VAE encode, then the model's latent scaling); no gradient: the VAE
    is frozen, and its weights may be inference tensors (ComfyUI loads them in inference mode)."""
    with torch.no_grad():
        latents = vae.encode(images[:, :, :, :3])
    return model.model.process_latent_in(latents).float().cpu().clone()
